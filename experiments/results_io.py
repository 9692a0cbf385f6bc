"""Where the benchmark scripts put their numbers: ``<out>.json`` and ``<out>.md``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_results(out: str | Path, meta: dict[str, Any], rows: list[Any], markdown: str) -> None:
    """Write ``{"meta", "results"}`` to ``out.json``, the table to ``out.md``, and print it."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "results": rows}, indent=2))
    out.with_suffix(".md").write_text(markdown)
    print(markdown)
