"""The shmq command and the C demo programs where they broke once (issue 15):
files under a queue's name that are no queue, names that talk to the terminal,
rm --stale under a waiting consumer, who holds a lossless producer back, and
programs started in any order.

Everything runs in subprocesses with a timeout, so a hang fails the test."""
import json
import os
import socket
import subprocess
import sys
import time

import pytest

import shmq
from cli_helpers import ENV, ROOT, cli, needs_consumer_wait, needs_inspect

SHM = "/dev/shm"


def _path(name):
    return os.path.join(SHM, shmq.NAME_PREFIX + name)


def _rows(out, name):
    return [line.split() for line in out.splitlines() if line.split()[:1] == [name]]


@pytest.fixture
def planted(names):
    """Makes things that are not regular files under queue names; removes them after."""
    made, sockets = [], []

    def plant(kind, target=None):
        name = names()
        path = _path(name)
        if kind == "fifo":
            os.mkfifo(path, 0o600)
        elif kind == "directory":
            os.mkdir(path, 0o700)
        elif kind == "symlink":
            os.symlink(target, path)
        elif kind == "socket":
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.bind(path)
            sockets.append(s)
        made.append(path)
        return name

    yield plant
    for s in sockets:
        s.close()
    for path in made:
        if os.path.isdir(path) and not os.path.islink(path):
            os.rmdir(path)
        elif os.path.lexists(path):
            os.unlink(path)


# ---------------------------------------------------------------- one owner for the layout

LOOK_ONLY = """
import builtins, io, os, sys
import shmq.__main__

def refuse(opener):
    def guarded(path, *args, **kwargs):
        if isinstance(path, (str, bytes)) and os.fsdecode(path).startswith("/dev/shm/"):
            raise AssertionError(f"the tools opened {path!r}")
        return opener(path, *args, **kwargs)
    return guarded

builtins.open = io.open = refuse(builtins.open)
os.open = refuse(os.open)
name = sys.argv[1]
for argv in (["ls"], ["ls", "--json"], ["stat", name, "--interval", "0.05"],
             ["stat", name, "--json", "--interval", "0.05"], ["rm", "--stale", "--dry-run"]):
    assert shmq.__main__.main(argv) == 0, argv
"""


@needs_inspect
def test_ls_stat_and_rm_stale_open_no_file_in_dev_shm_and_know_no_layout(names):
    name = names()
    with shmq.Producer(name, slot_size=16, capacity=8) as p, shmq.Consumer(name):
        p.publish(b"x")
        run = subprocess.run([sys.executable, "-c", LOOK_ONLY, name], capture_output=True, text=True,
                             timeout=60, env=ENV, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    assert name in run.stdout
    source = (ROOT / "shmq" / "_tools.py").read_text()
    for layout_knowledge in ("import struct", "import fcntl", "F_OFD_GETLK", "pread", "mmap"):
        assert layout_knowledge not in source


# ---------------------------------------------------------------- not a regular file

@needs_inspect
def test_ls_stat_and_rm_stale_report_a_fifo_socket_directory_and_symlink_as_invalid_without_hanging(
        names, planted):
    real = names()
    shmq.Producer(real, slot_size=16, capacity=8).close()
    kinds = {"fifo": "a FIFO", "socket": "a socket", "directory": "a directory", "symlink": "a symlink"}
    planted_names = {kind: planted(kind, target=_path(real)) for kind in kinds}

    table = cli("ls", timeout=30)
    listing = cli("ls", "--json", timeout=30)
    assert table.returncode == 0 and listing.returncode == 0, table.stderr + listing.stderr
    rows = {r["name"]: r for r in json.loads(listing.stdout)}
    for kind, name in planted_names.items():
        assert rows[name]["invalid"] == f"not a regular file ({kinds[kind]})"
        assert "slot_size" not in rows[name]
        (row,) = _rows(table.stdout, name)
        assert " ".join(row).endswith(f"invalid: not a regular file ({kinds[kind]})")
        run = cli("stat", name, "--interval", "0.05", timeout=30)
        assert run.returncode == 1 and "invalid" in run.stderr and len(run.stderr.splitlines()) == 1

    stale = cli("rm", "--stale", timeout=30)
    assert stale.returncode == 0, stale.stderr
    assert all(os.path.lexists(_path(name)) for name in planted_names.values())  # not ours to judge
    assert not shmq.exists(real)  # the symlink's target was a stale queue of its own

    for kind, name in planted_names.items():
        tail = cli("tail", name, "--follow", "--timeout", "1", timeout=30)
        assert tail.returncode == 1 and "not a regular file" in tail.stderr
        dry = cli("rm", "--dry-run", name, timeout=30)
        assert (dry.returncode, dry.stdout) == (0, f"would remove {name}\n")
        if kind != "directory":  # shm_unlink removes no directory
            run = cli("rm", name, timeout=30)
            assert (run.returncode, run.stdout) == (0, f"removed {name}\n"), run.stderr
            assert not os.path.lexists(_path(name))


@needs_inspect
def test_stat_does_not_open_a_fifo_planted_as_the_queues_bridge_status_file(names):
    name = names()
    status = _path(name) + ".bridge"
    with shmq.Producer(name, slot_size=16, capacity=8):
        os.mkfifo(status, 0o600)
        try:
            run = cli("stat", name, "--json", "--interval", "0.05", timeout=30)
            listing = cli("ls", "--json", timeout=30)
        finally:
            os.unlink(status)
    assert run.returncode == 0, run.stderr
    assert "bridge" not in json.loads(run.stdout)
    assert name + ".bridge" not in {r["name"] for r in json.loads(listing.stdout)}


def test_the_library_does_not_hang_on_a_fifo_under_a_queue_name(planted):
    name = planted("fifo")
    code = f"""
import shmq
assert shmq.exists({name!r})
for open_it in (lambda: shmq.Consumer({name!r}), lambda: shmq.Consumer({name!r}, register=False)):
    try:
        open_it()
    except shmq.IncompatibleQueue:
        pass
    else:
        raise SystemExit("opened a FIFO as a queue")
print("ok")
"""
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=20,
                         env=ENV, cwd=ROOT)
    assert run.returncode == 0 and run.stdout == "ok\n", run.stderr


# ---------------------------------------------------------------- names that talk to the terminal

@needs_inspect
def test_ls_escapes_a_newline_and_an_escape_sequence_in_a_name_and_json_keeps_it_exact(names):
    base = names()
    forged = f"{base}\nforged 0 1 2 live"
    coloured = f"{base}-\x1b[31mred\x1b]0;title\x07"
    for name in (forged, coloured):
        with open(_path(name), "wb") as f:
            f.write(b"not a queue")
    raw = os.fsencode(_path(base)) + b"-\xff"
    with open(raw, "wb"):
        pass
    try:
        table = cli("ls")
        listing = cli("ls", "--json")
    finally:
        for name in (forged, coloured):
            os.unlink(_path(name))
        os.unlink(raw)
    assert table.returncode == 0 and listing.returncode == 0, table.stderr + listing.stderr
    assert "\x1b" not in table.stdout and "\x07" not in table.stdout
    assert not any(line.startswith("forged") for line in table.stdout.splitlines())
    assert _rows(table.stdout, f"{base}\\nforged\\x200\\x201\\x202\\x20live")
    assert _rows(table.stdout, f"{base}-\\x1b[31mred\\x1b]0;title\\x07")
    assert _rows(table.stdout, f"{base}-\\xff")
    found = {r["name"] for r in json.loads(listing.stdout)}
    assert {forged, coloured, os.fsdecode(b"-".join([os.fsencode(base), b"\xff"]))} <= found


def test_tail_text_escapes_control_characters_and_backslashes(names):
    name = names()
    with shmq.Producer(name, slot_size=64, capacity=16) as p:
        p.publish(b"\x1b[2Jclear\tscreen\\ \xff")
        p.publish("caf\u00e9 \u202eevil".encode())
        run = cli("tail", name, "-n", "2")
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == ["\\x1b[2Jclear\\tscreen\\\\ \\xff", "caf\u00e9 \\u202eevil"]


def test_errors_naming_a_queue_never_reach_the_terminal_raw():
    run = cli("stat", "bad\x1b[31mname", "--interval", "0.05")
    assert run.returncode in (1, 3) and "\x1b" not in run.stderr


# ---------------------------------------------------------------- bench

@pytest.mark.parametrize("args", [["--size", "0"], ["--seconds", "-1"], ["--capacity", "0"],
                                  ["--capacity", "3"]])
def test_bench_argument_errors_go_to_stderr_with_exit_2(args):
    run = cli("bench", "--seconds", "0.1", *args)
    assert run.returncode == 2, run.stdout + run.stderr
    assert run.stdout == ""
    assert "error" in run.stderr.splitlines()[-1]


# ---------------------------------------------------------------- rm --stale, --dry-run

@needs_inspect
def test_rm_stale_keeps_a_queue_whose_consumer_waits_for_its_producer_to_restart(names):
    name = names()
    shmq.Producer(name, slot_size=64, capacity=16).close()
    with shmq.Consumer(name) as waiting:
        run = cli("rm", "--stale")
        assert run.returncode == 0, run.stderr
        assert shmq.exists(name) and name not in run.stdout
        with shmq.Producer(name) as again:  # the restart reaches the waiting consumer
            again.publish(b"back")
        assert waiting.poll(timeout=5) == b"back"
    dry = cli("rm", "--stale", "--dry-run")
    assert dry.returncode == 0 and f"would remove {name}\n" in dry.stdout and shmq.exists(name)
    run = cli("rm", "--stale")
    assert run.returncode == 0 and f"removed {name}\n" in run.stdout and not shmq.exists(name)


@needs_inspect
def test_rm_dry_run_names_what_it_would_remove_and_refuses_as_rm_would(names):
    idle, live, missing = names(), names(), names()
    shmq.Producer(idle, slot_size=64, capacity=16).close()
    with shmq.Producer(live, slot_size=64, capacity=16):
        ok = cli("rm", "--dry-run", idle)
        refused = cli("rm", "--dry-run", live)
        forced = cli("rm", "--dry-run", "--force", live)
        gone = cli("rm", "--dry-run", missing)
        assert shmq.exists(idle) and shmq.exists(live)
    assert (ok.returncode, ok.stdout) == (0, f"would remove {idle}\n")
    assert refused.returncode == 1 and "--force" in refused.stderr and refused.stdout == ""
    assert (forced.returncode, forced.stdout) == (0, f"would remove {live}\n")
    assert gone.returncode == 3


# ---------------------------------------------------------------- mode, consumers, who holds back

@needs_inspect
def test_ls_and_stat_name_the_consumer_holding_a_full_lossless_producer_back(names):
    name, lossy = names(), names()
    with shmq.Producer(name, slot_size=16, capacity=8, lossless=True) as p, \
            shmq.Consumer(name, start="earliest") as keeps_up, \
            shmq.Consumer(name, start="earliest") as stalled, \
            shmq.Consumer(name, start="earliest", register=False), \
            shmq.Producer(lossy, slot_size=16, capacity=8):
        for i in range(8):
            p.publish(b"%d" % i)
            assert keeps_up.poll() is not None
        with pytest.raises(shmq.Full):
            p.publish(b"no room", timeout=0)
        table, listing = cli("ls"), cli("ls", "--json")
        info = json.loads(cli("stat", name, "--json", "--interval", "0.05").stdout)
        text = cli("stat", name, "--interval", "0.05").stdout
        assert stalled.backlog == 8
    assert table.returncode == 0 and listing.returncode == 0, table.stderr + listing.stderr
    (row,) = _rows(table.stdout, name)
    assert row[5] == "lossless" and row[8:10] == ["2", "2"]  # the observer takes no entry
    rows = {r["name"]: r for r in json.loads(listing.stdout)}
    assert (rows[lossy]["lossless"], rows[lossy]["holding_back"]) == (False, None)
    assert _rows(table.stdout, lossy)[0][5] == "lossy"
    for r in (rows[name], info):
        assert (r["lossless"], r["consumers"], r["registered"]) == (True, 2, 2)
        assert sorted((e["registered"], e["lag"]) for e in r["entries"]) == [(True, 0), (True, 8)]
        slowest = next(e for e in r["entries"] if e["registered"] and e["lag"] == 8)
        assert r["holding_back"] == {"index": slowest["index"], "pid": os.getpid(), "uid": os.geteuid(),
                                     "user": slowest["user"], "lag": 8, "room": 0, "full": True,
                                     "unclear": False}
        assert all(e["uid"] == os.geteuid() and e["user"] for e in r["entries"])
    assert f"held back by entry {info['holding_back']['index']} (pid {os.getpid()}" in " ".join(row)
    assert "mode       lossless" in text and "held back  by entry" in text
    assert "the producer waits for it" in text and "USER" in text


# ---------------------------------------------------------------- help and version

def test_help_points_to_the_docs_in_the_repository_and_version_prints_it():
    run = cli("--help")
    assert run.returncode == 0
    assert "https://github.com/shmq/shmq/blob/main/docs/cli.md" in run.stdout
    assert " docs/" not in run.stdout.replace("/blob/main/docs/", "")
    version = cli("--version")
    assert (version.returncode, version.stdout) == (0, f"shmq {shmq.__version__}\n")


# ---------------------------------------------------------------- any start order: C programs

def _start_consumer(consumer, name, *args):
    return subprocess.Popen([str(consumer), name, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _finish(proc, timeout=60):
    try:
        return proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def _produce(producer, name, count, *args):
    run = subprocess.run([str(producer), name, "--count", str(count), *args], capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith(f"published={count} ")


def test_c_consumer_started_first_reads_two_producer_runs_and_exits_at_its_count(names, c_programs):
    producer, consumer = c_programs
    name = names()
    proc = _start_consumer(consumer, name, "--count", "2000", "--timeout", "30")
    try:
        time.sleep(0.3)  # it is waiting for a queue that does not exist yet
        assert proc.poll() is None
        _produce(producer, name, 1000)
        time.sleep(0.3)  # past the end of the first run, it waits for the next
        assert proc.poll() is None
        _produce(producer, name, 1000)
    finally:
        out, err = _finish(proc)
    assert proc.returncode == 0, err
    assert out == "received=2000 lost=0 corrupt=0\n"


def test_c_consumer_follows_a_queue_removed_and_made_again(names, c_programs):
    producer, consumer = c_programs
    name = names()
    proc = _start_consumer(consumer, name, "--count", "1500", "--timeout", "30")
    try:
        _produce(producer, name, 1000)
        time.sleep(0.3)
        shmq.unlink(name)
        _produce(producer, name, 500, "--capacity", "1024", "--slot-size", "128")
    finally:
        out, err = _finish(proc)
    assert proc.returncode == 0, err
    assert out == "received=1500 lost=0 corrupt=0\n"


def test_c_consumer_gives_up_with_3_when_the_queue_never_appears(names, c_programs):
    _, consumer = c_programs
    t0 = time.monotonic()
    proc = _start_consumer(consumer, names(), "--count", "1", "--timeout", "0.5")
    out, err = _finish(proc)
    assert proc.returncode == 3 and out == "received=0 lost=0 corrupt=0\n"
    assert "no such queue" in err and time.monotonic() - t0 < 10


def test_c_consumer_ends_on_sigint_while_it_waits_for_the_queue(names, c_programs):
    _, consumer = c_programs
    proc = _start_consumer(consumer, names(), "--timeout", "inf")
    time.sleep(0.3)
    proc.send_signal(2)
    out, _ = _finish(proc, timeout=10)
    assert proc.returncode == 0 and out == "received=0 lost=0 corrupt=0\n"


# ---------------------------------------------------------------- any start order: shmq tail

def _tail(*args):
    return subprocess.Popen([sys.executable, "-m", "shmq", "tail", *args], env=ENV, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@needs_consumer_wait
def test_tail_follow_started_first_prints_two_producer_runs_and_a_recreated_queue_until_its_count(names):
    name = names()
    tail = _tail(name, "--follow", "--count", "5", "--timeout", "30")
    try:
        time.sleep(1.0)  # started, and waiting for the queue
        assert tail.poll() is None
        with shmq.Producer(name, slot_size=64, capacity=16) as p:
            p.publish(b"run 1")
        with shmq.Producer(name) as p:
            p.publish(b"run 2")
        time.sleep(0.5)
        try:
            shmq.unlink(name)
        except shmq.QueueNotFound:
            pass  # another test's `rm --stale` was first: the tail takes no entry, so it looked stale
        time.sleep(0.5)
        with shmq.Producer(name, slot_size=32, capacity=8) as p:
            for m in (b"new 1", b"new 2", b"new 3", b"not printed"):
                p.publish(m)
    finally:
        out, err = _finish(tail)
    assert tail.returncode == 0, err
    assert out.splitlines() == ["run 1", "run 2", "new 1", "new 2", "new 3"]


@needs_consumer_wait
def test_tail_follow_timeout_ends_an_idle_tail_and_a_queue_that_never_appears_exits_3(names):
    name = names()
    with shmq.Producer(name, slot_size=64, capacity=16) as p:
        p.publish(b"old")
        t0 = time.monotonic()
        idle = cli("tail", name, "--follow", "-n", "1", "--timeout", "0.5", timeout=30)
    assert (idle.returncode, idle.stdout) == (0, "old\n") and time.monotonic() - t0 < 10
    never = cli("tail", names(), "--follow", "--timeout", "0.3", timeout=30)
    assert never.returncode == 3 and "no queue" in never.stderr


def test_a_bridge_status_file_that_outlived_its_queue_is_removed(queue_name):
    """bridge.md: a status file lives beside its queue; once the queue is
    gone by other means, `rm --stale` (and `rm NAME`) take it away too."""
    status = f"/dev/shm/shmq-{queue_name}.bridge"
    for remover in (("rm", "--stale"), ("rm", queue_name)):
        with open(status, "w") as f:
            f.write("{}")
        if remover[1] == "--stale":
            dry = cli("rm", "--stale", "--dry-run")
            assert f"would remove the bridge status of {queue_name}" in dry.stdout, dry.stdout
            assert os.path.exists(status)
        cli(*remover)
        assert not os.path.exists(status)
