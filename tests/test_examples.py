"""Every Python program in examples/ runs to completion, says what it proved,
and leaves nothing in /dev/shm. (examples/hello_producer.c is built and run
by tests/test_c_install.py.)"""
import os
import subprocess
import sys

import pytest

from conftest import CHILD_ENV, ROOT

pytestmark = pytest.mark.slow  # several processes each, numpy: not for the ASan run

# What each program prints when it worked (besides exiting 0).
EXPECTED = {
    "fanout.py": "worker 3 ",
    "lossless_pipeline.py": "(right), lost 0",
    "numpy_frames.py": ", 0 wrong",
    "asyncio_consumer.py": "average: 1000 ticks",
    "trio_consumer.py": "in order, complete",
    "worker_pool.py": "every task done exactly once",
}


def test_every_example_is_tested():
    assert {p.name for p in (ROOT / "examples").glob("*.py")} == set(EXPECTED)


@pytest.mark.parametrize("program", sorted(EXPECTED))
def test_example_runs_and_cleans_up(program, tmp_path):
    proc = subprocess.Popen([sys.executable, str(ROOT / "examples" / program)], cwd=tmp_path, env=CHILD_ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
        proc.wait()
        # The examples name their queues example-...-PID, after their own pid.
        left = [e for e in os.listdir("/dev/shm") if e.startswith("shmq-example-") and f"-{proc.pid}" in e]
        for entry in left:
            os.unlink(f"/dev/shm/{entry}")
    assert proc.returncode == 0, f"{program} exited {proc.returncode}:\n{out[-3000:]}\n{err[-3000:]}"
    assert EXPECTED[program] in out, out
    assert not left, f"{program} left these in /dev/shm: {left}"
