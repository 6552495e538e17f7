"""The public evaluation data beside the repository (``../shared/eval``), for the eval_* and bench_* scripts.

The tests never read it (they use tests/data/audio); a script that needs a file that is not there stops with
a message naming it, not a traceback."""

from __future__ import annotations

import sys
from pathlib import Path

EVAL_DIR = Path(__file__).resolve().parents[2] / "shared" / "eval"


def require_eval_data(*paths: Path, option: str | None = None) -> None:
    """Exit naming the first of ``paths`` that is missing; ``option`` is the script's flag for another copy."""
    for path in paths:
        if not path.exists():
            elsewhere = f"; {option} takes a copy elsewhere" if option else ""
            sys.exit(f"{path} not found: this script needs the evaluation data set beside the repository "
                     "(../shared/eval: public data, not part of the repository; see ../shared/eval/README.md and "
                     f"each folder's SOURCES.md){elsewhere}")
