"""What a section measured, written to its JSON file after every figure (a killed section keeps its figures)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any


def clean(value: Any) -> Any:
    """JSON-safe copy: floats rounded to 6 significant digits, non-finite floats as strings (never NaN in JSON)."""
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    if isinstance(value, float):
        return float(f"{value:.6g}") if math.isfinite(value) else str(value)
    return value


class Record:
    """A section's results: ``put`` a key and the whole record is rewritten atomically to ``path``."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.data: dict[str, Any] = {}

    def put(self, key: str, value: Any) -> Any:
        self.data[key] = clean(value)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1))
        os.replace(tmp, self.path)
        return value

    def append(self, key: str, item: Any) -> None:
        """Add ``item`` to the list under ``key`` (created when missing) and write."""
        items = list(self.data.get(key, []))
        items.append(clean(item))
        self.put(key, items)


def read(path: str | os.PathLike) -> dict:
    """A section's record as last written ({} when it wrote nothing)."""
    path = Path(path)
    return json.loads(path.read_text()) if path.is_file() else {}
