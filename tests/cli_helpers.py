"""What the tests of the shmq command share: running it, and knowing whether
the library pieces it stands on (shmq.inspect, Consumer(wait=)) are there."""
import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

import shmq

ROOT = Path(__file__).resolve().parent.parent
ENV = dict(os.environ, PYTHONPATH=str(ROOT))


def cli(*args, timeout=60, cwd=ROOT):
    """Runs `python -m shmq ARGS` with the working tree's shmq; never waits past timeout."""
    return subprocess.run([sys.executable, "-m", "shmq", *args], capture_output=True, text=True,
                          timeout=timeout, env=ENV, cwd=cwd)


def _inspect_works():
    try:
        shmq.inspect("pytest-no-such-queue")
    except AttributeError:
        return False
    except shmq.QueueNotFound:
        return True
    except OSError as e:
        return e.errno != errno.ENOSYS
    return True


def _consumer_waits():
    try:
        shmq.Consumer("pytest-no-such-queue", wait=0)
    except TypeError:
        return False
    except shmq.QueueNotFound:
        return True
    return True


# ls, stat and rm --stale are built on shmq.inspect; tail --follow on Consumer(wait=).
needs_inspect = pytest.mark.skipif(not _inspect_works(), reason="shmq.inspect has not landed yet")
needs_consumer_wait = pytest.mark.skipif(not _consumer_waits(),
                                         reason="shmq.Consumer(wait=) has not landed yet")
