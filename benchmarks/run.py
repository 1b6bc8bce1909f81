"""Runs the full benchmark suite and refreshes docs/benchmarks.md.

    python benchmarks/run.py [--quick] [any option of `python -m shmq bench`]
"""
import sys
from pathlib import Path

root = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(root)) if False else None  # the installed shmq is used

from shmq import _bench  # noqa: E402

if __name__ == "__main__":
    args = sys.argv[1:]
    if "--docs" not in args:
        args += ["--docs", str(root / "docs" / "benchmarks.md"), "--out", str(root / "benchmarks" / "results")]
    sys.exit(_bench.main(args))
