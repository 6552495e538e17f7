"""What the eval_* and bench_* scripts share: the public evaluation data beside the repository
(``../shared/eval``), and percentiles of their measurements.

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


def pct(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values``, linearly interpolated; NaN for no values."""
    if not values:
        return float("nan")
    values = sorted(values)
    k = (len(values) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)
