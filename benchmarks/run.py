"""The full benchmark suite: shmq against other ways to move messages between
processes (multiprocessing, faster-fifo, pyzmq, iceoryx2, POSIX message queues)
and against a bare C ring, from a checkout of the repository.

    pip install '.[bench]'                  # the peers, into the venv that has shmq
    python benchmarks/run.py --quick        # 64-byte messages, under a minute
    python benchmarks/run.py --docs         # the full run; rewrites docs/benchmarks.md
    python benchmarks/run.py --help         # every option

Results go to benchmarks/results/ (results.json, results.md, plots). A peer
that is not installed is skipped with a note. The suite lives in suite.py and
contenders.py beside this file; `python -m shmq bench` is only a quick
measurement of shmq alone.
"""
import sys

import suite  # benchmarks/suite.py: this script's folder is first on sys.path

if __name__ == "__main__":
    sys.exit(suite.main(sys.argv[1:]))
