"""The shmq command: ls, stat, tail and rm (see docs/cli.md).

Everything shown about a queue comes from the C core through shmq.inspect,
which validates the ring, asks the kernel which producer and consumers are
alive and takes nothing; tail reads with a Consumer opened with
register=False. This module knows no layout and opens no file in /dev/shm:
it lists the names there, and lstat()s each one first, so that a FIFO,
socket, directory or symlink planted under a queue's name is reported as
invalid without anything ever opening it (opening a FIFO blocks).

Every string that reaches a terminal (names, user names, reasons, message
text) goes through printable() first: a file name can hold a newline or an
escape sequence. JSON output is exact, since json.dumps escapes it already.
"""
import base64
import json
import os
import pwd
import stat
import sys
import time

import shmq

SHM_DIR = "/dev/shm"
# The queue's own auxiliary files, which are not queues: the core's lock files
# (the consumer state's and the producer's), and the status file of a
# `bridge in` that feeds it (shmq/bridge.py). No queue name may end in them.
STATE_SUFFIX = ".consumers"
PRODUCER_SUFFIX = ".producer"
BRIDGE_SUFFIX = ".bridge"
CORE_SUFFIXES = (STATE_SUFFIX, PRODUCER_SUFFIX)
AUX_SUFFIXES = CORE_SUFFIXES + (BRIDGE_SUFFIX,)

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_NO_QUEUE = 0, 1, 2, 3

_ESCAPES = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


class NoQueue(Exception):
    """The named queue does not exist (exit code 3)."""


def printable(text, space=False):
    """text with every character a terminal could act on written as an escape,
    the way repr() writes it: \\n, \\x1b, \\u202e; a backslash is doubled so
    that an escape can't be forged. A byte that was not UTF-8 (a surrogate
    from os.listdir) is shown as \\xNN. space=True escapes spaces too (names,
    so that a column can't be forged)."""
    out = []
    for ch in text:
        code = ord(ch)
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ch == " ":
            out.append("\\x20" if space else " ")
        elif ch.isprintable():
            out.append(ch)
        elif 0xDC80 <= code <= 0xDCFF:  # surrogateescape: the original byte
            out.append(f"\\x{code - 0xDC00:02x}")
        elif code < 0x100:
            out.append(f"\\x{code:02x}")
        elif code < 0x10000:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    return "".join(out)


def _name(text):
    return printable(text, space=True)


def _user(uid):
    if uid is None:
        return "?"  # an entry page that is not ours to read
    try:
        return pwd.getpwuid(uid).pw_name
    except (KeyError, OverflowError):
        return str(uid)


def _path(name, suffix=""):
    return os.path.join(SHM_DIR, shmq.NAME_PREFIX + name + suffix)


def _shm_files():
    try:
        return os.listdir(SHM_DIR)
    except FileNotFoundError:
        return []


def queue_names():
    """Names of the files shmq-NAME in /dev/shm, auxiliary files excluded, sorted."""
    prefix = shmq.NAME_PREFIX
    return sorted(f[len(prefix):] for f in _shm_files()
                  if f.startswith(prefix) and not f.endswith(AUX_SUFFIXES))


def _orphans():
    """(name, suffix) of the core's files (NAME.consumers, NAME.producer)
    that exist without their ring."""
    files = set(_shm_files())
    prefix = shmq.NAME_PREFIX
    found = []
    for f in sorted(files):
        for suffix in CORE_SUFFIXES:
            if f.startswith(prefix) and f.endswith(suffix) and f[:-len(suffix)] not in files:
                found.append((f[len(prefix):-len(suffix)], suffix))
    return found


_KINDS = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a directory"),
          (stat.S_ISLNK, "a symlink"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"))


def _not_regular(mode):
    """Why a file of this st_mode can't be a queue, or None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    kind = next((what for test, what in _KINDS if test(mode)), "not a file")
    return f"not a regular file ({kind})"


def _regular(name):
    """False if something other than a regular file sits under queue name
    (nothing may open it: a FIFO would block); True otherwise, missing included."""
    try:
        return stat.S_ISREG(os.lstat(_path(name)).st_mode)
    except FileNotFoundError:
        return True


def _reason(e, name=None):
    if isinstance(e, OSError) and e.strerror:
        text = e.strerror
    else:
        text = str(e)
        if name is not None and text.endswith(f": {name!r}"):
            text = text[:-len(f": {name!r}")]  # the row names it already
    return text.splitlines()[0] if text else type(e).__name__


def _holding_back(info):
    """On a lossless queue, the registered consumer with the largest lag (the
    lowest entry on a tie), if that lag is more than 0: the producer may publish
    capacity - lag more messages before it must wait for that consumer, and is
    blocked (full) once lag >= capacity. None otherwise."""
    if not info["lossless"]:
        return None
    registered = [e for e in info["entries"] if e["registered"]]
    if not registered:
        return None
    slowest = max(registered, key=lambda e: (e["lag"], -e["index"]))
    if slowest["lag"] == 0:
        return None
    return {"index": slowest["index"], "pid": slowest["pid"], "uid": slowest["uid"],
            "user": slowest["user"], "lag": slowest["lag"], "unclear": slowest["unclear"],
            "room": max(info["capacity"] - slowest["lag"], 0),
            "full": slowest["lag"] >= info["capacity"]}


def describe(name):
    """A dict describing one queue (docs/cli.md, "--json fields"); raises NoQueue.

    A file that is not a valid queue gives {"invalid": reason}, one that could
    not be looked at (permission, resources) {"unreadable": reason}."""
    try:
        st = os.lstat(_path(name))  # lstat: never follows, never opens
    except FileNotFoundError:
        raise NoQueue(name) from None
    base = {"name": name, "owner": _user(st.st_uid), "owner_uid": st.st_uid}
    why = _not_regular(st.st_mode)
    if why:
        return dict(base, size=st.st_size, invalid=why)
    try:
        q = shmq.inspect(name)
    except shmq.QueueNotFound:
        raise NoQueue(name) from None
    except (shmq.IncompatibleQueue, ValueError) as e:
        return dict(base, size=st.st_size, invalid=_reason(e, name))
    except OSError as e:
        return dict(base, size=st.st_size, unreadable=_reason(e, name))
    entries = [{"index": c["index"], "pid": c["pid"], "uid": c["uid"], "user": _user(c["uid"]),
                "registered": bool(c["registered"]), "position": c["position"], "lag": c["lag"],
                "lost": c["lost"], "unclear": bool(c["unclear"])} for c in q["consumers"]]
    info = {
        "name": name, "owner": _user(q["owner_uid"]), "owner_uid": q["owner_uid"],
        "permissions": f"{q['mode'] & 0o7777:04o}",
        "size": q["ring_bytes"] + q["state_bytes"], "ring_bytes": q["ring_bytes"],
        "state_bytes": q["state_bytes"],
        "slot_size": q["slot_size"], "max_message_size": q["max_message_size"],
        "capacity": q["capacity"], "lossless": bool(q["lossless"]),
        "first_sequence": q["first_sequence"], "head": q["head"],
        "producer_alive": bool(q["producer_alive"]), "ended": bool(q["ended"]),
        "consumers": len(entries), "registered": sum(e["registered"] for e in entries),
        "consumer_entries": q["max_consumers"], "entries": entries,
        "groups": [dict(g, name=printable(g["name"]), user=_user(g["uid"]))
                   for g in q.get("groups", [])],
    }
    info["holding_back"] = _holding_back(info)
    return info


def _bridge_feed(name):
    """The counters of a `bridge in` that feeds queue name, or None."""
    from . import bridge  # its status file needs no zenoh

    try:
        if not stat.S_ISREG(os.lstat(_path(name, BRIDGE_SUFFIX)).st_mode):
            return None  # bridge.status opens it: never a FIFO
    except OSError:
        return None
    feed = bridge.status(name)
    if not feed:
        return None
    return {k: feed.get(k) for k in ("key", "pid", "received", "source_lost", "transit_lost",
                                     "too_large", "resets", "updated")}


def _producer_word(info):
    return "live" if info["producer_alive"] else "ended" if info["ended"] else "dead"


def _mode_word(info):
    return "lossless" if info["lossless"] else "lossy"


def _problem(info):
    """'invalid: REASON' or 'unreadable: REASON' for an entry that is no usable queue."""
    for key in ("invalid", "unreadable"):
        if key in info:
            return f"{key}: {printable(info[key])}"
    return None


def _held_back_text(h, capacity):
    who = f"entry {h['index']} (pid {h['pid']}, {printable(h['user'])})"
    if h["unclear"]:
        # docs/cli.md: a second id lock was planted beside the entry's own.
        who = f"entry {h['index']} (unclear: someone planted a second lock for it)"
    if h["full"]:
        return f"by {who}: lag {h['lag']:,} of {capacity:,} slots, the producer waits for it"
    return f"by {who}: lag {h['lag']:,} of {capacity:,} slots, {h['room']:,} free"


def _emit(line, out):
    print(line, file=out, flush=True)


# ---------------------------------------------------------------- ls

def unlinked_but_open():
    """Queues whose ring was unlinked while processes still map it: {name: [pids]},
    from /proc/PID/maps (the processes we may read)."""
    found = {}
    prefix = f"{SHM_DIR}/{shmq.NAME_PREFIX}"
    try:
        pids = [p for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return found
    for pid in pids:
        try:
            with open(f"/proc/{pid}/maps", encoding="utf-8", errors="surrogateescape") as maps:
                for line in maps:
                    path = line.rstrip("\n").split(None, 5)[-1]
                    if not (path.startswith(prefix) and path.endswith(" (deleted)")):
                        continue
                    name = path[len(prefix):-len(" (deleted)")]
                    if name.endswith(AUX_SUFFIXES):
                        continue
                    if int(pid) not in found.setdefault(name, []):
                        found[name].append(int(pid))
        except OSError:
            continue  # gone, or not ours to read
    return found


def list_queues(as_json=False, out=sys.stdout) -> int:
    rows = []
    for name in queue_names():
        try:
            rows.append(describe(name))
        except NoQueue:
            continue  # removed while we looked
    for name, pids in sorted(unlinked_but_open().items()):
        rows.append({"name": name, "unlinked": True, "open_by": sorted(pids)})
    if as_json:
        _emit(json.dumps(rows), out)
        return EXIT_OK
    if not rows:
        _emit("no shmq queues in /dev/shm", out)
        return EXIT_OK
    names = {id(r): _name(r["name"]) for r in rows}
    owners = {id(r): _name(r.get("owner", "-")) for r in rows}
    width = max(4, *map(len, names.values()))
    owner_w = max(5, *map(len, owners.values()))
    _emit(f"{'NAME':<{width}} {'OWNER':<{owner_w}} {'BYTES':>12} {'SLOT':>8} {'SLOTS':>9} "
          f"{'MODE':<8} {'HEAD':>14} {'PRODUCER':<8} {'CONSUMERS':>9} {'REGISTERED':>10}", out)
    blank = f"{'-':>8} {'-':>9} {'-':<8} {'-':>14} {'-':<8} {'-':>9} {'-':>10}"
    for r in rows:
        name, owner = f"{names[id(r)]:<{width}}", f"{owners[id(r)]:<{owner_w}}"
        if r.get("unlinked"):
            pids = ", ".join(map(str, r["open_by"]))
            _emit(f"{name} {'-':<{owner_w}} {'-':>12} {blank}  unlinked, still open by pid {pids}", out)
            continue
        lead = f"{name} {owner} {r['size']:>12,}"
        problem = _problem(r)
        if problem:
            _emit(f"{lead} {blank}  {problem}", out)
            continue
        line = (f"{lead} {r['slot_size']:>8} {r['capacity']:>9} {_mode_word(r):<8} {r['head']:>14} "
                f"{_producer_word(r):<8} {r['consumers']:>9} {r['registered']:>10}")
        if r["holding_back"]:
            line += "  held back " + _held_back_text(r["holding_back"], r["capacity"])
        _emit(line, out)
    return EXIT_OK


# ---------------------------------------------------------------- stat

def _usable(name):
    info = describe(name)
    problem = _problem(info)
    if problem:
        raise shmq.IncompatibleQueue(f"{name}: not a usable queue: {problem}")
    return info


def stat_queue(name, as_json=False, watch=False, interval=1.0, out=sys.stdout) -> int:
    while True:
        before = _usable(name)
        t0 = time.monotonic()
        time.sleep(interval)
        info = _usable(name)
        elapsed = time.monotonic() - t0
        info["interval"] = round(elapsed, 3)
        info["rate"] = max(info["head"] - before["head"], 0) / elapsed
        feed = _bridge_feed(name)
        if feed:
            info["bridge"] = feed
        if as_json:
            _emit(json.dumps(info), out)
        else:
            _print_stat(info, out)
        if not watch:
            return EXIT_OK
        if not as_json:
            _emit("", out)


def _print_stat(info, out):
    lines = [
        ("queue", _name(info["name"])),
        ("owner", f"{printable(info['owner'])} (uid {info['owner_uid']}), permissions {info['permissions']}"),
        ("size", f"{info['size']:,} bytes (ring {info['ring_bytes']:,}, consumer state "
                 f"{info['state_bytes']:,})"),
        ("slots", f"{info['capacity']} x {info['slot_size']} bytes, messages up to "
                  f"{info['max_message_size']:,} bytes"),
        ("mode", _mode_word(info)),
        ("head", f"{info['head']} (first sequence {info['first_sequence']})"),
        ("producer", _producer_word(info)),
        ("rate", f"{info['rate']:,.0f} msgs/s over {info['interval']:.1f} s"),
        ("consumers", f"{info['consumers']} live, {info['registered']} registered, "
                      f"of {info['consumer_entries']} entries"),
    ]
    if info["lossless"]:
        h = info["holding_back"]
        lines.append(("held back", _held_back_text(h, info["capacity"]) if h else "by no one"))
    feed = info.get("bridge")
    if feed:
        lines.append(("bridge", f"in from {printable(str(feed['key']))} (pid {feed['pid']}): "
                                f"received {feed['received']}, source lost {feed['source_lost']}, "
                                f"transit lost {feed['transit_lost']}"))
    for key, value in lines:
        _emit(f"{key:<10} {value}", out)
    if info.get("groups"):
        name_w = max(5, *(len(g["name"]) for g in info["groups"]))
        users = [_name(g["user"]) for g in info["groups"]]
        user_w = max(4, *map(len, users))
        _emit(f"  {'GROUP':<{name_w}} {'USER':<{user_w}} {'MEMBERS':>7} {'POSITION':>14} "
              f"{'LAG':>12} {'LOST':>12} {'CLAIMED':>8}", out)
        for g, user in zip(info["groups"], users):
            _emit(f"  {g['name']:<{name_w}} {user:<{user_w}} {g['members']:>7} {g['position']:>14} "
                  f"{g['lag']:>12} {g['lost']:>12} {g['claimed']:>8}"
                  + ("  unclear: locks were planted for it" if g["unclear"] else ""), out)
    if info["entries"]:
        users = [_name(e["user"]) for e in info["entries"]]
        user_w = max(4, *map(len, users))
        _emit(f"  {'ENTRY':>5} {'PID':>8} {'USER':<{user_w}} {'REG':<3} {'POSITION':>14} "
              f"{'LAG':>12} {'LOST':>12}", out)
        for e, user in zip(info["entries"], users):
            _emit(f"  {e['index']:>5} {e['pid']:>8} {user:<{user_w}} {'yes' if e['registered'] else 'no':<3} "
                  f"{e['position']:>14} {e['lag']:>12} {e['lost']:>12}"
                  + ("  unclear: a second lock was planted for it" if e["unclear"] else ""), out)


# ---------------------------------------------------------------- tail

def _format(fmt, seq, data):
    if fmt == "text":
        return printable(data.decode("utf-8", "surrogateescape").rstrip("\n"))
    if fmt == "hex":
        return data.hex()
    if fmt == "len":
        return f"{seq} {len(data)}"
    record = {"seq": seq, "len": len(data), "data": base64.b64encode(data).decode("ascii")}
    try:
        record["text"] = data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    return json.dumps(record)


class _Idle:
    """The --timeout clock: how long is left until nothing has arrived for too long."""

    def __init__(self, seconds):
        self.seconds = seconds
        self.reset()

    def reset(self):
        self.deadline = None if self.seconds is None else time.monotonic() + self.seconds

    def left(self):
        """Seconds left (None: no limit), never negative."""
        return None if self.deadline is None else max(self.deadline - time.monotonic(), 0.0)


def _open_tail(name, count, follow, idle):
    """The consumer tail reads with (register=False: it never holds anyone back).
    An existing queue is read from count messages back, at most one ring; with
    follow, a queue that does not exist yet is waited for (up to idle) and read
    from its earliest message, since all of it is newer than this tail."""
    if not _regular(name):
        _usable(name)  # raises, saying what it is
    try:
        with shmq.Consumer(name, register=False) as probe:
            head, capacity = probe.position, probe.capacity
    except shmq.QueueNotFound:
        if not follow:
            raise NoQueue(name) from None
        return _reattach(name, idle)
    # Never start before the oldest slot still in the ring: that would count
    # as lost what was simply never asked for.
    start = max(head - count, head - capacity, 0)
    try:
        return shmq.Consumer(name, start=start, register=False)
    except shmq.QueueNotFound:
        if not follow:
            raise NoQueue(name) from None
        return _reattach(name, idle)


def _reattach(name, idle):
    """Waits (up to idle) for queue name to exist, and reads it from its earliest message."""
    try:
        return shmq.Consumer(name, start="earliest", register=False, wait=idle.left())
    except shmq.QueueNotFound:
        return None


def tail_queue(name, count=10, follow=False, fmt="text", limit=None, timeout=None,
               out=sys.stdout, err=sys.stderr) -> int:
    """Prints the last count messages; with follow, every later one too, across
    producer runs and across the queue being removed and made again, until
    limit messages were printed or nothing arrived for timeout seconds."""
    idle = _Idle(timeout if follow else None)
    consumer = _open_tail(name, count, follow, idle)
    if consumer is None:
        raise NoQueue(name)
    printed = 0
    try:
        lost = consumer.lost
        while limit is None or printed < limit:
            left = idle.left()
            if follow and left == 0:
                return EXIT_OK
            # poll(timeout) waits on past the end of a stream, for the next producer run.
            if follow:
                data = consumer.poll(0.2 if left is None else min(0.2, left))
            else:
                data = consumer.poll(0)
            if consumer.lost != lost:
                _emit(f"shmq tail: lost {consumer.lost - lost} messages (the producer lapped this reader)", err)
                lost = consumer.lost
            if data is not None:
                _emit(_format(fmt, consumer.position - 1, data), out)
                printed += 1
                idle.reset()
                continue
            if not follow:
                return EXIT_OK
            if consumer.unlinked:  # drained; its name may belong to a new queue now
                consumer.close()
                consumer = _reattach(name, idle)
                if consumer is None:
                    return EXIT_OK  # it did not come back in time
                lost = consumer.lost
        return EXIT_OK
    finally:
        if consumer is not None:
            consumer.close()


# ---------------------------------------------------------------- rm

def _in_use(info):
    """Why a queue must not count as stale, or None: a live producer, or live
    consumers (one may be waiting for its producer to come back)."""
    if info["producer_alive"]:
        return "a live producer holds it"
    if info["consumers"]:
        pids = ", ".join(str(e["pid"]) for e in info["entries"])
        return f"{info['consumers']} live consumer(s) (pid {pids})"
    return None


def unlink_queues(names, force=False, stale=False, dry_run=False, out=sys.stdout, err=sys.stderr) -> int:
    status = EXIT_OK
    missing = False
    for name in names:
        try:
            regular = _regular(name)
            if dry_run:
                info = describe(name)
                if regular:
                    shmq.exists(name)  # refuses a bad name, as unlink would
                if not force and info.get("producer_alive"):
                    raise shmq.ProducerBusy(name)
                _emit(f"would remove {_name(name)}", out)
                continue
            # No producer can hold what is not a regular file; force spares
            # the core from opening it to ask.
            shmq.unlink(name, force=force or not regular)
            _remove_bridge_status(name)
            _emit(f"removed {_name(name)}", out)
        except (shmq.QueueNotFound, NoQueue):
            # A bridge's status file may outlive its queue: it goes too.
            if not dry_run:
                _remove_bridge_status(name)
            _emit(f"shmq rm: no queue {name!r}", err)
            missing = True
        except shmq.ProducerBusy:
            _emit(f"shmq rm: {_name(name)}: a live producer holds it (use --force to remove it anyway)", err)
            status = EXIT_FAILED
        except (shmq.ShmqError, ValueError, OSError) as e:
            _emit(f"shmq rm: {_name(name)}: {printable(_reason(e, name))}", err)
            status = EXIT_FAILED
    if stale:
        status = max(status, _remove_stale(dry_run, out, err))
    if status == EXIT_OK and missing:
        return EXIT_NO_QUEUE
    return status


def _remove_bridge_status(name):
    """A removed queue's bridge status file goes with it."""
    from . import bridge

    bridge.remove_status(name)


def _remove_stale(dry_run, out, err) -> int:
    status = EXIT_OK
    verb = "would remove" if dry_run else "removed"
    for name in queue_names():
        try:
            info = describe(name)
        except NoQueue:
            continue
        if _problem(info) or _in_use(info):
            continue  # not ours to judge, or in use
        try:
            if not dry_run:
                shmq.unlink(name)  # refuses if a producer took it meanwhile
                _remove_bridge_status(name)
            _emit(f"{verb} {_name(name)}", out)
        except shmq.QueueNotFound:
            pass
        except (shmq.ShmqError, ValueError, OSError) as e:
            _emit(f"shmq rm: {_name(name)}: {printable(_reason(e, name))}", err)
            status = EXIT_FAILED
    # A lock file of the core whose ring is gone: shmq.unlink removes it (the
    # core knows what it is; this module never opens it).
    for name, suffix in _orphans():
        try:
            if not stat.S_ISREG(os.lstat(_path(name, suffix)).st_mode):
                continue  # not the core's: a FIFO, a directory...
            if shmq.exists(name):
                continue  # its queue was made meanwhile
        except (FileNotFoundError, ValueError):
            continue  # gone meanwhile, or no queue's name: not ours to remove
        try:
            if not dry_run:
                shmq.unlink(name)
            _emit(f"{verb} {_name(name)}{suffix} (its queue is gone)", out)
        except shmq.QueueNotFound:
            pass
        except (shmq.ShmqError, ValueError, OSError) as e:
            _emit(f"shmq rm: {_name(name)}{suffix}: {printable(_reason(e, name))}", err)
            status = EXIT_FAILED
    # A bridge's status files whose queue is gone (bridge.py names them
    # NAME.bridge and NAME~out-HASH.bridge).
    files = set(_shm_files())
    for name in sorted({f[len(shmq.NAME_PREFIX):-len(BRIDGE_SUFFIX)].split("~")[0]
                        for f in files
                        if f.startswith(shmq.NAME_PREFIX) and f.endswith(BRIDGE_SUFFIX)}):
        if shmq.NAME_PREFIX + name in files:
            continue
        if not dry_run:
            _remove_bridge_status(name)
        _emit(f"{verb} the bridge status of {_name(name)} (its queue is gone)", out)
    return status
