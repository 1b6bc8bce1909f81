"""The one-minute soak (scripts/soak.py), run only where SHMQ_SOAK=1 (CI sets it).

One C producer at 200k messages/s and eight Python consumers, four of them
SIGKILLed and replaced every 2 s: every message checked, received + lost ==
position - start for every incarnation, resident sets and descriptors flat,
no consumer entry left held by the dead, and nothing left in /dev/shm.
"""
import os
import subprocess
import sys

import pytest

from conftest import ROOT

SECONDS = 60


@pytest.mark.slow
@pytest.mark.timeout(SECONDS + 240)
@pytest.mark.skipif(os.environ.get("SHMQ_SOAK") != "1", reason="set SHMQ_SOAK=1 to run the soak")
def test_a_one_minute_soak_with_killed_consumers_leaks_nothing_and_loses_count_of_nothing():
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path}
    run = subprocess.run([sys.executable, str(ROOT / "scripts" / "soak.py"), "--seconds", str(SECONDS)],
                         capture_output=True, text=True, timeout=SECONDS + 180, cwd=ROOT, env=env)
    print(run.stdout)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.strip().endswith("soak: passed")
