"""Fixtures: unique queue names that are always unlinked, and the C programs."""
import itertools
import os
import subprocess
import sys
from pathlib import Path

import pytest

import shmq

ROOT = Path(__file__).resolve().parent.parent
_counter = itertools.count()


@pytest.fixture
def name():
    """A fresh queue name; the segment is removed after the test, whatever happens."""
    queue = f"pytest-{os.getpid()}-{next(_counter)}"
    yield queue
    try:
        shmq.unlink(queue, force=True)  # even if a test left its producer open
    except shmq.QueueNotFound:
        pass


@pytest.fixture
def names():
    """A factory of fresh queue names, all removed after the test."""
    made = []

    def make():
        queue = f"pytest-{os.getpid()}-{next(_counter)}"
        made.append(queue)
        return queue

    yield make
    for queue in made:
        try:
            shmq.unlink(queue, force=True)
        except shmq.QueueNotFound:
            pass


@pytest.fixture(scope="session")
def c_programs():
    """Paths of the C producer and consumer programs, built with make if needed."""
    subprocess.run(["make", "-s", "producer", "consumer"], cwd=ROOT, check=True)
    return ROOT / "producer", ROOT / "consumer"


def run_python(code: str, timeout: float = 60, **kwargs) -> subprocess.CompletedProcess:
    """Runs code in a fresh interpreter (for anything that could crash or hang)."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=timeout, **kwargs)
