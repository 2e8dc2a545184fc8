"""Did the gradients vanish? Per-epoch summaries of recorded gradient norms (numpy only, no torch).

The verdict compares the first main-path layer (closest to the input) with the last: gradients
flow backward, so a first layer whose mean norm is a tiny fraction of the last layer's has
received almost nothing. Non-finite norms (a diverged step) are left out of every mean and
counted instead; every number in the result is a plain float, int, bool or None (never NaN).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from deepgrad_core.norms import NormBlock
from deepgrad_core.series import epoch_means

log = logging.getLogger(__name__)


def vanishing_summary(block: NormBlock | None, *, steps_per_epoch: int, fraction: float = 1e-3,
                      ends: tuple[int, int] | None = None) -> dict:
    """JSON-friendly summary of one block of norms.

    ``ends``: the columns compared (default the first and the last): the first and last main-path layers
    when the roles are known (``summarize_run``), so that neither a 1x1 reducer nor the classifier decides.

    Keys: ``kind``, ``layers``, ``has_data``, ``epochs`` (epoch indices present; step ``s`` is
    in epoch ``s // steps_per_epoch``), ``mean_per_epoch`` ({layer: [mean of finite norms, or
    None, per epoch]}), ``first_last_ratio_per_epoch`` (first layer mean / last layer mean per
    epoch), ``first_last_ratio`` (that ratio in the last epoch present), ``min_layer`` (the layer
    with the smallest mean in that epoch), ``vanishing`` (ratio < ``fraction``), ``fraction`` and
    ``nonfinite_steps`` (how many steps had any NaN/inf norm).

    A ratio is None where it is undefined: fewer than two layers, no finite value in the first
    or last layer, or a last-layer mean of zero. ``vanishing`` is None when the ratio is, and for
    a None or empty block (``has_data`` False).
    """
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
    summary: dict[str, Any] = {
        "kind": block.kind if block is not None else None,
        "layers": list(block.layers) if block is not None else [],
        "has_data": block is not None and len(block) > 0,
        "epochs": [], "mean_per_epoch": {}, "first_last_ratio_per_epoch": [], "first_last_ratio": None,
        "min_layer": None, "vanishing": None, "fraction": fraction, "nonfinite_steps": 0,
        "first_layer": None, "last_layer": None,
    }
    if not summary["has_data"]:
        return summary
    epochs, means, nonfinite = epoch_means(block.steps, block.values, steps_per_epoch)  # [epochs, layers]
    first, last = ends if ends is not None else (0, len(block.layers) - 1)
    ratios = [_ratio(row[[first, last]]) if first != last else None for row in means]
    final = means[-1]
    summary.update(
        epochs=[int(e) for e in epochs],
        mean_per_epoch={layer: [_jsonable(v) for v in means[:, j]] for j, layer in enumerate(block.layers)},
        first_last_ratio_per_epoch=ratios,
        first_last_ratio=ratios[-1],
        min_layer=block.layers[int(np.nanargmin(final))] if np.isfinite(final).any() else None,
        vanishing=None if ratios[-1] is None else bool(ratios[-1] < fraction),
        nonfinite_steps=nonfinite,
        first_layer=block.layers[first],
        last_layer=block.layers[last],
    )
    return summary


def summarize_run(blocks: dict[str, NormBlock | None], *, steps_per_epoch: int, fraction: float,
                  roles: dict[str, str] | None = None) -> dict:
    """``{kind: vanishing_summary(...)}`` for every block, plus the run's verdict.

    ``roles`` (layer name -> role, as ``TrackedLayer.role``): the ratio compares the first and the last
    main-path layer (``stem``/``main``); without roles, the first and the last tracked layer.

    ``vanishing`` is the activation-gradient verdict when there is one (it sees each layer's
    output, which is what vanishes), else the weight-gradient verdict, else None;
    ``vanishing_source`` names the kind it came from.
    """
    result: dict[str, Any] = {
        kind: vanishing_summary(block, steps_per_epoch=steps_per_epoch, fraction=fraction,
                                ends=_main_ends(block, roles))
        for kind, block in blocks.items()}
    source = next((k for k in ("activation", "weight")
                   if k in result and result[k]["vanishing"] is not None), None)
    result["vanishing"] = result[source]["vanishing"] if source is not None else None
    result["vanishing_source"] = source
    log.debug("run verdict: vanishing=%s from %s", result["vanishing"], source)
    return result


def _main_ends(block: NormBlock | None, roles: dict[str, str] | None) -> tuple[int, int] | None:
    """Columns of the first and last main-path layer of ``block`` (None: use the first and last)."""
    if block is None or not roles:
        return None
    main = [i for i, name in enumerate(block.layers) if roles.get(name) in ("stem", "main")]
    return (main[0], main[-1]) if len(main) >= 2 else None


def _ratio(means: np.ndarray) -> float | None:
    """First / last layer mean; None when undefined (one layer, missing value, or last is zero)."""
    if len(means) < 2 or not (np.isfinite(means[0]) and np.isfinite(means[-1])) or means[-1] == 0:
        return None
    return float(means[0] / means[-1])


def _jsonable(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None
