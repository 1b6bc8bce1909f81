"""Fixtures: unique queue names that are always unlinked, and the C programs."""
import itertools
import os
import resource
import queue
import subprocess
import sys
import textwrap
import threading
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
def queue_name(name):
    """A fresh queue name; both segments are removed after the test, even while
    a producer it started still holds them, and the test fails if any is left."""
    yield name
    try:
        shmq.unlink(name, force=True)
    except shmq.QueueNotFound:
        pass
    ring = f"/dev/shm/{shmq.NAME_PREFIX}{name}"
    assert not os.path.exists(ring) and not os.path.exists(ring + ".consumers")


@pytest.fixture
def clean_queue(name):
    """A fresh queue name; after the test, force-unlinked, and nothing named
    after it (ring, consumer state, group pages) may be left in /dev/shm."""
    yield name
    try:
        shmq.unlink(name, force=True)
    except shmq.QueueNotFound:
        pass
    stem = shmq.NAME_PREFIX + name
    left = [f for f in os.listdir("/dev/shm")
            if f.startswith(stem) and not f[len(stem):len(stem) + 1].isdigit()]
    assert not left, f"left in /dev/shm: {left}"


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


# The environment of child Python processes: they import this tree's shmq.
CHILD_ENV = {**os.environ,
             "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


class Child:
    """A Python process running `code` with the working tree's shmq; its
    stdout lines are read by a thread, so no read can hang the test."""

    def __init__(self, code, *args):
        self.proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *map(str, args)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env=CHILD_ENV)
        self.pid = self.proc.pid
        self.lines = queue.Queue()
        self.stderr = []
        self._readers = [threading.Thread(target=self._pump, args=(self.proc.stdout, self.lines.put),
                                          daemon=True),
                         threading.Thread(target=self._pump, args=(self.proc.stderr, self.stderr.append),
                                          daemon=True)]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _pump(stream, sink):
        for line in stream:
            sink(line.rstrip("\n"))

    def line(self, timeout=30):
        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty:
            pytest.fail(f"child {self.pid} said nothing for {timeout} s; stderr: {self.errors()}")

    def expect(self, word, timeout=30):
        got = self.line(timeout)
        assert got.split()[0:1] == [word], f"expected {word!r}, got {got!r}; stderr: {self.errors()}"
        return got

    def errors(self):
        return "\n".join(self.stderr)

    def tell(self, text):
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()

    def wait(self, timeout=30):
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"child {self.pid} did not exit within {timeout} s; stderr: {self.errors()}")

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
        return self.proc.wait(timeout=30)

    def reap(self):
        self.kill()
        for reader in self._readers:
            reader.join(timeout=10)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            try:
                stream.close()
            except OSError:  # a broken pipe to a dead child
                pass


@pytest.fixture
def children():
    """Starts Child processes; all are killed and reaped after the test."""
    made = []

    def start(code, *args):
        child = Child(code, *args)
        made.append(child)
        return child

    yield start
    for child in made:
        child.reap()


@pytest.fixture
def many_files():
    """Raises this process's descriptor limit to the hard limit for the test
    (hundreds of queues and consumers)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 4096:
        pytest.skip(f"RLIMIT_NOFILE's hard limit is {hard}: too few descriptors for hundreds of queues")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
