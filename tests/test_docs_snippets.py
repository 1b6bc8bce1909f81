"""Every Python block in README.md and docs/*.md runs, as written.

Each ```python block is saved as a script and run with this tree's shmq in a
fresh interpreter, in an empty folder, for at most two minutes; it passes
when it exits 0 and leaves none of its queues in /dev/shm. A block that needs
a second process starts it itself (multiprocessing, or subprocess with
sys.executable and __file__). A block that is not meant to run (a fragment,
one that needs another host) carries `<!-- not-run: why -->` on the line
before it; pages that other people own and whose fragments cannot carry the
marker yet are listed in NOT_RUN below, with the reason. docs/contributing.md
says all this for whoever writes a page."""
import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import CHILD_ENV, ROOT

pytestmark = pytest.mark.slow  # many interpreters, numpy: not for the ASan run

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<info>[^\n`]*)\n(?P<body>.*?)^(?P=indent)```[ \t]*$", re.M | re.S)
MARKER = re.compile(r"<!--\s*not-run(?::\s*(?P<why>.*?))?\s*-->\s*$")
# Blocks on pages owned by others, not run for now: (page, the block's first
# line) -> why. A listed block that no longer exists fails the stale test.
NOT_RUN = {
    ("docs/zero-copy.md", "with producer.loan(size, timeout=None) as buf:   # writable memoryview, exactly size bytes"):
        "a fragment: `producer`, `consumer`, `frame` and `np` come from the reader's program",
    ("docs/bridge.md", "from shmq import bridge"):
        "a fragment of the API (needs two hosts, Zenoh and open ports); tests/test_bridge.py runs it",
}


def _blocks():
    """(page, line, first line, code, why-not-run or None) for every python block."""
    found = []
    for page in PAGES:
        text = page.read_text()
        for m in FENCE.finditer(text):
            if m.group("info").strip().split(" ")[0] not in ("python", "py"):
                continue
            code = "\n".join(line[len(m.group("indent")):] for line in m.group("body").split("\n"))
            line = text.count("\n", 0, m.start()) + 1
            before = text[:m.start()].rstrip().rsplit("\n", 1)[-1]
            rel = page.relative_to(ROOT).as_posix()
            first = code.strip().split("\n", 1)[0]
            marker = MARKER.search(before)
            why = None
            if marker:
                why = marker.group("why") or ""
            elif (rel, first) in NOT_RUN:
                why = NOT_RUN[(rel, first)]
            found.append((rel, line, first, code, why))
    return found


BLOCKS = _blocks()


def _queue_name_prefixes(code):
    """The literal names (or the literal start of f-string names) given to
    Producer() and Consumer() in a block."""
    names = set()
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Call) and node.args and \
                getattr(node.func, "attr", getattr(node.func, "id", None)) in ("Producer", "Consumer"):
            arg = node.args[0]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                names.add(arg.value)
            elif isinstance(arg, ast.JoinedStr) and arg.values and isinstance(arg.values[0], ast.Constant):
                names.add(arg.values[0].value)
    return {n for n in names if n}


def _segments():
    return {e for e in os.listdir("/dev/shm") if e.startswith("shmq-")}


@pytest.mark.parametrize("page,line,first,code,why", [b for b in BLOCKS if b[4] is None],
                         ids=[f"{b[0]}:{b[1]}" for b in BLOCKS if b[4] is None])
def test_block_runs_and_cleans_up(page, line, first, code, why, tmp_path):
    script = tmp_path / "snippet.py"
    script.write_text(code)
    before = _segments()
    try:
        proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=CHILD_ENV,
                              capture_output=True, text=True, timeout=120)
    finally:
        prefixes = _queue_name_prefixes(code)
        left = sorted(e for e in _segments() - before
                      if any(e[len("shmq-"):].startswith(p) for p in prefixes))
        for entry in left:  # this run's leftovers must not fail the next one
            os.unlink(f"/dev/shm/{entry}")
    assert proc.returncode == 0, f"{page}:{line} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert not left, f"{page}:{line} left these in /dev/shm: {left}"


def test_blocks_that_do_not_run_say_why():
    silent = [f"{page}:{line}" for page, line, _, _, why in BLOCKS if why == ""]
    assert not silent, f"write the reason into the marker, <!-- not-run: why -->: {silent}"


def test_not_run_list_names_only_blocks_that_exist():
    present = {(page, first) for page, _, first, _, _ in BLOCKS}
    stale = [key for key in NOT_RUN if key not in present]
    assert not stale, f"NOT_RUN lists blocks that are gone (take them out): {stale}"


def test_every_block_has_queue_names_of_its_own():
    """Two blocks that share a queue name could see each other's queue."""
    owners = {}
    for page, line, _, code, why in BLOCKS:
        if why is None:
            for name in _queue_name_prefixes(code):
                owners.setdefault(name, set()).add(f"{page}:{line}")
    shared = {name: sorted(where) for name, where in owners.items() if len(where) > 1}
    assert not shared, f"queue names used by more than one block: {shared}"
