"""The shmq command against real queues, from real subprocesses."""
import base64
import json
import os
import subprocess
import sys
import time

import pytest

import shmq
from cli_helpers import ENV, ROOT, needs_inspect
from cli_helpers import cli as _cli


def _spawn(code, *args):
    return subprocess.Popen([sys.executable, "-c", code, *args], env=ENV, cwd=ROOT, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


# A registered consumer in another process: reads `count` messages, says so, then waits.
CONSUMER = """
import sys, shmq
c = shmq.Consumer(sys.argv[1], start="earliest")
for _ in range(int(sys.argv[2])):
    assert c.poll(timeout=10) is not None
print("ready", flush=True)
sys.stdin.read()
"""

# A producer in another process: publishes until told to stop on stdin.
PUBLISHER = """
import sys, threading, time, shmq
p = shmq.Producer(sys.argv[1], slot_size=64, capacity=1024)
stop = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
print("ready", flush=True)
while not stop.is_set():
    p.publish(b"tick")
    time.sleep(0.001)
p.close()
"""


def _row(out, name):
    return next(line.split() for line in out.splitlines() if line.split()[0] == name)


@needs_inspect
def test_ls_shows_a_live_and_an_ended_queue_in_columns_and_json(names):
    live, ended = names(), names()
    shmq.Producer(ended, slot_size=64, capacity=16).close()
    with shmq.Producer(live, slot_size=32, capacity=8) as p, \
            shmq.Consumer(live, start="earliest") as c:
        p.publish(b"x")
        p.publish(b"y")
        table = _cli("ls")
        listing = _cli("ls", "--json")
    assert table.returncode == 0 and listing.returncode == 0, table.stderr + listing.stderr
    assert table.stdout.splitlines()[0].split() == [
        "NAME", "OWNER", "BYTES", "SLOT", "SLOTS", "MODE", "HEAD", "PRODUCER", "CONSUMERS", "REGISTERED"]
    assert _row(table.stdout, live)[3:] == ["32", "8", "lossy", "2", "live", "1", "0"]
    assert _row(table.stdout, ended)[3:] == ["64", "16", "lossy", "0", "ended", "0", "0"]
    rows = {r["name"]: r for r in json.loads(listing.stdout)}
    r = rows[live]
    assert (r["slot_size"], r["capacity"], r["head"], r["producer_alive"], r["ended"], r["consumers"]) \
        == (32, 8, 2, True, False, 1)
    assert (r["lossless"], r["registered"], r["holding_back"]) == (False, 0, None)
    assert [(e["pid"], e["uid"], e["registered"], e["position"], e["lag"]) for e in r["entries"]] \
        == [(os.getpid(), os.geteuid(), False, 0, 2)]
    assert r["owner_uid"] == os.geteuid() and r["size"] == r["ring_bytes"] + r["state_bytes"]
    assert r["ring_bytes"] == os.stat(f"/dev/shm/shmq-{live}").st_size and r["permissions"] == "0600"
    assert (rows[ended]["producer_alive"], rows[ended]["ended"]) == (False, True)
    # The core's auxiliary files (NAME.consumers, ...) are never listed as queues.
    assert {n for n in rows if n.split(".")[0] in (live, ended)} == {live, ended}
    assert {r[0] for r in map(str.split, table.stdout.splitlines()) if r[0].split(".")[0] in (live, ended)} \
        == {live, ended}


@needs_inspect
def test_ls_shows_a_foreign_shmq_file_as_invalid_not_an_error(names):
    foreign = names()
    with open(f"/dev/shm/shmq-{foreign}", "wb") as f:
        f.write(b"not a queue")
    table = _cli("ls")
    listing = _cli("ls", "--json")
    assert table.returncode == 0 and table.stderr == ""
    assert "invalid:" in " ".join(_row(table.stdout, foreign))
    assert "invalid" in {r["name"]: r for r in json.loads(listing.stdout)}[foreign]


@needs_inspect
def test_ls_shows_a_queue_unlinked_while_still_open_with_its_pids(names):
    name = names()
    with shmq.Producer(name, slot_size=16, capacity=8) as p, shmq.Consumer(name) as c:
        shmq.unlink(name, force=True)
        assert c.unlinked and not os.path.exists(f"/dev/shm/shmq-{name}")
        table = _cli("ls")
        listing = {r["name"]: r for r in json.loads(_cli("ls", "--json").stdout)}
        p.publish(b"still works")
        assert c.poll() == b"still works"
    assert "unlinked, still open by pid" in " ".join(_row(table.stdout, name))
    assert listing[name]["unlinked"] is True and os.getpid() in listing[name]["open_by"]
    assert name not in {r["name"] for r in json.loads(_cli("ls", "--json").stdout)}


@needs_inspect
def test_stat_json_shows_each_consumers_lag_and_a_positive_rate(names):
    name = names()
    publisher = _spawn(PUBLISHER, name)
    readers = []
    try:
        assert publisher.stdout.readline() == "ready\n"
        readers = [_spawn(CONSUMER, name, "1"), _spawn(CONSUMER, name, "2")]
        for r in readers:
            assert r.stdout.readline() == "ready\n"
        run = _cli("stat", name, "--json", "--interval", "0.5")
        assert run.returncode == 0, run.stderr
        info = json.loads(run.stdout)
        assert info["producer_alive"] and info["rate"] > 0 and info["consumers"] == 2
        entries = info["entries"]
        assert sorted(e["pid"] for e in entries) == sorted(r.pid for r in readers)
        for e in entries:
            assert e["lag"] == info["head"] - e["position"] and e["lag"] > 0
        text = _cli("stat", name, "--interval", "0.2")
        assert text.returncode == 0 and "consumers  2 live" in text.stdout
    finally:
        for proc in readers + [publisher]:
            proc.communicate("", timeout=30)
    assert publisher.returncode == 0, publisher.stderr


@pytest.mark.parametrize("fmt", ["text", "hex", "len", "json"])
def test_tail_n_prints_the_last_messages_in_each_format(names, fmt):
    name = names()
    messages = [f"message {i}".encode() for i in range(10)]
    with shmq.Producer(name, slot_size=64, capacity=16) as p:
        for m in messages:
            p.publish(m)
        run = _cli("tail", name, "-n", "3", "--format", fmt)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    last = list(zip(range(7, 10), messages[7:]))
    expected = {
        "text": [m.decode() for _, m in last],
        "hex": [m.hex() for _, m in last],
        "len": [f"{s} {len(m)}" for s, m in last],
        "json": [{"seq": s, "len": len(m), "data": base64.b64encode(m).decode(), "text": m.decode()}
                 for s, m in last],
    }[fmt]
    assert (lines if fmt != "json" else [json.loads(line) for line in lines]) == expected


def test_tail_follow_prints_later_messages_past_the_producers_close_until_its_count(names):
    name = names()
    p = shmq.Producer(name, slot_size=64, capacity=16)
    p.publish(b"before")
    tail = subprocess.Popen([sys.executable, "-m", "shmq", "tail", name, "-n", "0", "--follow",
                             "--count", "3"],
                            env=ENV, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1.0)  # let it open the queue
        for i in range(2):
            p.publish(f"later {i}".encode())
        p.close()  # the tail waits on for the next producer run
        with shmq.Producer(name) as again:
            again.publish(b"later 2")
        out, err = tail.communicate(timeout=30)
    finally:
        p.close()
        if tail.poll() is None:
            tail.kill()
    assert tail.returncode == 0, err
    assert out.splitlines() == ["later 0", "later 1", "later 2"]


def test_rm_refuses_a_live_queue_unless_forced(names):
    name = names()
    with shmq.Producer(name, slot_size=64, capacity=16):
        refused = _cli("rm", name)
        assert refused.returncode == 1
        assert len(refused.stderr.splitlines()) == 1 and "--force" in refused.stderr
        assert shmq.exists(name)
        forced = _cli("rm", "--force", name)
        assert forced.returncode == 0, forced.stderr
        assert not shmq.exists(name)


@needs_inspect
def test_rm_stale_removes_only_queues_without_a_live_producer(names):
    live, ended = names(), names()
    shmq.Producer(ended, slot_size=64, capacity=16).close()
    with shmq.Producer(live, slot_size=64, capacity=16):
        run = _cli("rm", "--stale")
        assert run.returncode == 0, run.stderr
        assert shmq.exists(live) and not shmq.exists(ended)
        assert not os.path.exists(f"/dev/shm/shmq-{ended}.consumers")


def test_a_missing_queue_exits_3_with_one_line(names):
    missing = names()
    for args in (["stat", missing], ["tail", missing], ["rm", missing]):
        run = _cli(*args)
        assert run.returncode == 3, args
        assert run.stderr.splitlines() == [f"shmq {args[0]}: no queue {missing!r}"]


def test_help_lists_every_subcommand_and_the_exit_codes():
    run = _cli("--help")
    assert run.returncode == 0
    for command in ("ls", "stat", "tail", "rm", "demo", "bench"):
        assert f"    {command} " in run.stdout
    assert "3  no such queue" in run.stdout
    assert _cli("frobnicate").returncode == 2
    version = _cli("--version")
    assert version.returncode == 0 and version.stdout == f"shmq {shmq.__version__}\n"
