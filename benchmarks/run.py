"""Runs the full benchmark suite and refreshes docs/benchmarks.md.

    python benchmarks/run.py [--quick] [any option of `python -m shmq bench`]
"""
import sys
from pathlib import Path

from shmq import _bench  # the installed package

root = Path(__file__).resolve().parent.parent

if __name__ == "__main__":
    args = sys.argv[1:]
    if "--docs" not in args:
        args += ["--docs", str(root / "docs" / "benchmarks.md"), "--out", str(root / "benchmarks" / "results")]
    sys.exit(_bench.main(args))
