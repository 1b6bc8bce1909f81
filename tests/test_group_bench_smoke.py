"""benchmarks/group_bench.py runs end to end on tiny counts, so that it does not
rot: every section, shmq's group and the peers that are installed, each
message checked to arrive exactly once. Speed itself is never asserted."""
import importlib.util
import json
import os
import subprocess
import sys

import pytest

from conftest import CHILD_ENV, ROOT

SCRIPT = ROOT / "benchmarks" / "group_bench.py"

pytestmark = [pytest.mark.slow,  # dozens of processes: not for the ASan run
              pytest.mark.skipif(not SCRIPT.exists(), reason="benchmarks/ is only in a source checkout")]


def test_group_bench_runs_every_section_checks_every_message_and_cleans_up(tmp_path):
    who = ["shmq-group", "shmq-plain", "mp.Queue"]
    if importlib.util.find_spec("faster_fifo"):
        who.append("faster-fifo")
    out, png = tmp_path / "groups.json", tmp_path / "groups.png"
    docs_png = ROOT / "docs" / "groups.png"
    docs_before = docs_png.read_bytes() if docs_png.exists() else None
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), "--quick", "--verify", "--seconds", "0.05", "--readme-scale", "0.002",
         "--only", ",".join(who), "--json", str(out), "--plot", str(png)],
        cwd=tmp_path, env=CHILD_ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = proc.communicate(timeout=240)
    finally:
        proc.kill()
        proc.wait()
        # The benchmark names its queues bench-TAG-PID-..., after its own pid.
        left = [e for e in os.listdir("/dev/shm") if e.startswith("shmq-bench-") and f"-{proc.pid}-" in e]
        for entry in left:
            os.unlink(f"/dev/shm/{entry}")
    assert proc.returncode == 0, stdout[-3000:] + stderr[-3000:]
    assert not left, f"group_bench.py left these in /dev/shm: {left}"
    result = json.loads(out.read_text())
    assert not [s for s in result["samples"] if "error" in s]
    assert {s["who"] for s in result["samples"] if s["section"] != "readme"} == set(who)
    assert {s["section"] for s in result["samples"]} == {"dispatch", "pool", "readme"}
    for s in result["samples"]:
        assert s["received"] == s["sent"] > 0, s
    group = [s for s in result["samples"] if s["who"] == "shmq-group" and s["section"] == "dispatch"]
    assert sorted(len(s["per_worker"]) for s in group) == [2, 4]
    assert "| shmq-group |" in stdout
    # Only a run without --plot rewrites the published figure.
    assert (docs_png.read_bytes() if docs_png.exists() else None) == docs_before
