"""JSON that every parser reads: NaN and infinities become null (strict JSON, JavaScript, jq have no NaN)."""

from __future__ import annotations

import json
from typing import Any


def strict_json(obj: Any) -> Any:
    """The same JSON tree with every NaN/inf replaced by None."""
    return json.loads(json.dumps(obj), parse_constant=lambda _: None)
