"""python -m shmq list / unlink (hidden aliases of ls / rm): the segments can be found and removed."""
import os
import subprocess
import sys
from pathlib import Path

import shmq
from cli_helpers import needs_inspect

ROOT = Path(__file__).resolve().parent.parent


def _cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "shmq", *args], capture_output=True, text=True,
                          timeout=60, cwd=cwd, env=dict(os.environ, PYTHONPATH=str(ROOT)))


@needs_inspect
def test_list_shows_geometry_and_producer_and_unlink_removes(names, tmp_path):
    live, stale, foreign = names(), names(), names()
    shmq.Producer(stale, slot_size=64, capacity=16).close()
    with open(f"/dev/shm/shmq-{foreign}", "wb") as f:
        f.write(b"not a queue")
    with shmq.Producer(live, slot_size=32, capacity=8) as p:
        p.publish(b"x")
        out = _cli("list", cwd=tmp_path).stdout
    lines = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert lines[live].split()[3:8] == ["32", "8", "lossy", "1", "live"]
    assert lines[stale].split()[3:8] == ["64", "16", "lossy", "0", "ended"]
    assert "invalid:" in lines[foreign]
    run = _cli("unlink", stale, foreign, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert not shmq.exists(stale) and not shmq.exists(foreign)
    run = _cli("unlink", stale, cwd=tmp_path)
    assert run.returncode == 3 and "no queue" in run.stderr
    assert os.path.exists(f"/dev/shm/shmq-{live}")
