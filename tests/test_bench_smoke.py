"""The benchmarks run end to end, so that they do not rot: `python -m shmq bench`
(shipped in the package) and a tiny run of the full suite in benchmarks/
(shmq only, from the checkout). Speed itself is never asserted here."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import shmq
from conftest import ROOT


def _env():
    """The environment for a child that must import the shmq under test (this
    one), whatever its working folder and whatever else is installed."""
    here = str(Path(shmq.__file__).resolve().parent.parent)
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")]))}


def test_shmq_bench_measures_one_producer_and_one_consumer_and_cleans_up(tmp_path):
    run = subprocess.run([sys.executable, "-m", "shmq", "bench", "--seconds", "0.3"],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path, env=_env())
    assert run.returncode == 0, run.stdout + run.stderr
    assert "received + lost == published: yes" in run.stdout
    assert "M msgs/s" in run.stdout
    assert "benchmarks/run.py" in run.stdout  # says where the full suite is
    queue = re.search(r"queue '([^']+)'", run.stdout).group(1)
    assert not [f for f in os.listdir("/dev/shm") if f.startswith(shmq.NAME_PREFIX + queue)]


def test_shmq_bench_refuses_bad_arguments():
    run = subprocess.run([sys.executable, "-m", "shmq", "bench", "--size", "0"],
                         capture_output=True, text=True, timeout=60, env=_env())
    assert run.returncode == 2
    assert "must be positive" in run.stderr


SUITE = ROOT / "benchmarks" / "run.py"


@pytest.mark.skipif(not SUITE.exists(), reason="benchmarks/ is only in a source checkout")
def test_full_suite_runs_and_writes_its_outputs(tmp_path):
    out = tmp_path / "bench"
    docs = ROOT / "docs" / "benchmarks.md"
    docs_before = docs.read_bytes() if docs.exists() else None
    run = subprocess.run(
        [sys.executable, str(SUITE), "--quick", "--rounds", "1", "--seconds", "0.05",
         "--only", "shmq-py,shmq-py-bulk", "--shapes", "1p1c,pingpong", "--skip-memory",
         "--out", str(out)],
        capture_output=True, text=True, timeout=120, cwd=tmp_path, env=_env())
    assert run.returncode == 0, run.stderr
    result = json.loads((out / "results.json").read_text())
    assert not [s for s in result["samples"] if "error" in s]
    assert {s["contender"] for s in result["samples"]} >= {"shmq-py", "shmq-py-bulk", "shmq-py:spin"}
    assert result["segment_check"]["exact"]
    assert "| shmq-py |" in (out / "results.md").read_text()
    # Only --docs rewrites the published page.
    assert (docs.read_bytes() if docs.exists() else None) == docs_before
