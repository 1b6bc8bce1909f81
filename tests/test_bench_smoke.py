"""The benchmark suite runs end to end (a tiny run, shmq only): it is shipped,
so it must not rot. Speed itself is never asserted here."""
import json
import subprocess
import sys


def test_bench_runs_and_writes_its_outputs(tmp_path):
    out = tmp_path / "bench"
    run = subprocess.run(
        [sys.executable, "-m", "shmq", "bench", "--quick", "--rounds", "1", "--seconds", "0.05",
         "--only", "shmq-py,shmq-py-bulk", "--shapes", "1p1c,pingpong", "--skip-memory",
         "--out", str(out)],
        capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    result = json.loads((out / "results.json").read_text())
    assert not [s for s in result["samples"] if "error" in s]
    assert {s["contender"] for s in result["samples"]} >= {"shmq-py", "shmq-py-bulk", "shmq-py:spin"}
    assert result["segment_check"]["exact"]
    assert "| shmq-py |" in (out / "results.md").read_text()
