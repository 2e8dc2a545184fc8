"""Per-layer gradient-norm series as numpy arrays."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Gradients:
    """One kind of gradient-norm series for some layers of a job.

    ``steps``: int64 ``[n]`` training steps; ``values``: float64 ``[n, len(layers)]``, NaN where the
    server sent null (a missing or non-finite norm); column ``j`` belongs to ``layers[j]``, whose
    ``depths[j]`` is its position among tracked layers as the server numbers it and ``relative_depths[j]``
    runs from 0 (first tracked layer) to 1 (last); ``roles[j]`` is ``stem``/``main`` (the main path),
    ``reduce``, ``shortcut`` or ``classifier``. ``records``: entries recorded in the range before
    downsampling; ``total_steps``: training steps from the first of them to the last (activation norms are
    sampled, so they have fewer records than steps); ``downsampled``: the server kept each bucket's min and max.
    """

    job_id: str
    kind: str
    steps: np.ndarray
    values: np.ndarray
    layers: list[str]
    depths: np.ndarray
    relative_depths: np.ndarray
    total_steps: int
    downsampled: bool
    records: int = 0
    roles: list[str] | None = None

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> Gradients:
        """Build from the server's answer, whose ``values`` are one list per layer."""
        layers = body.get("layers") or []
        steps = np.asarray(body.get("steps") or [], dtype=np.int64)
        rows = [[np.nan if v is None else v for v in series] for series in body.get("values") or []]
        values = np.asarray(rows, dtype=np.float64).reshape(len(layers), len(steps)).T
        return cls(
            job_id=body.get("job_id", ""),
            kind=body.get("kind", ""),
            steps=steps,
            values=np.ascontiguousarray(values),
            layers=[layer["name"] for layer in layers],
            depths=np.asarray([layer.get("depth", i) for i, layer in enumerate(layers)], dtype=np.int64),
            relative_depths=np.asarray([layer.get("relative_depth", np.nan) for layer in layers],
                                       dtype=np.float64),
            total_steps=int(body.get("total_steps") or 0),
            downsampled=bool(body.get("downsampled", False)),
            records=int(body.get("records", body.get("total_steps")) or 0),
            roles=[layer.get("role", "main") for layer in layers],
        )

    def series(self, layer: str) -> np.ndarray:
        """The column of one layer, by name."""
        try:
            return self.values[:, self.layers.index(layer)]
        except ValueError:
            raise KeyError(f"no layer {layer!r}; layers here: {', '.join(self.layers)}") from None
