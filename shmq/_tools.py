"""The shmq command: ls, stat, tail and rm (see docs/cli.md).

Queue geometry, head, producer liveness and the end-of-stream mark come from
the C core through a Consumer opened with register=False, so that looking
never takes a consumer entry; this module never reads the ring itself.

The one thing the binding does not report is the list of consumer entries.
That is read here from NAME.consumers (layout in docs/consumer-state.md) as
untrusted input: copied with pread on an O_RDONLY descriptor (never mapped,
never written), every header field validated before use. An entry counts as
live only while some process holds the OFD write lock on its first byte,
which the kernel drops when that process dies; pid, position and lost are
display values, a snapshot that may be a moment old.
"""
import base64
import fcntl
import json
import os
import pwd
import struct
import sys
import time

import shmq

SHM_DIR = "/dev/shm"
STATE_SUFFIX = ".consumers"

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_NO_QUEUE = 0, 1, 2, 3

# Consumer-state header and entry, little-endian, as in docs/consumer-state.md.
_STATE_MAGIC = 0x736E6F63716D6873  # "shmqcons"
_STATE_HEADER = struct.Struct("<QIIIIQQ")
_STATE_ENTRY = struct.Struct("<QIIQ")
_STATE_ENTRIES_MAX = 1024

# struct flock for F_OFD_GETLK (Linux): short l_type, short l_whence, off_t
# l_start, off_t l_len, pid_t l_pid, padded to the alignment of off_t.
_F_OFD_GETLK = getattr(fcntl, "F_OFD_GETLK", 36)
_FLOCK = struct.Struct("hhqqi4x")
_F_WRLCK, _F_UNLCK, _SEEK_SET = fcntl.F_WRLCK, fcntl.F_UNLCK, os.SEEK_SET


class NoQueue(Exception):
    """The named queue does not exist (exit code 3)."""


def _path(name, suffix=""):
    return os.path.join(SHM_DIR, shmq.NAME_PREFIX + name + suffix)


def _user(uid):
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


# A bridge's status file (shmq/bridge.py) sits beside the queue it feeds.
BRIDGE_SUFFIX = ".bridge"


def _remove_bridge_status(name):
    """A removed queue's bridge status file goes with it."""
    from . import bridge

    bridge.remove_status(name)


def queue_names():
    """Names of the files shmq-NAME in /dev/shm, NAME.consumers excluded, sorted."""
    try:
        files = sorted(os.listdir(SHM_DIR))
    except FileNotFoundError:
        return []
    return [f[len(shmq.NAME_PREFIX):] for f in files
            if f.startswith(shmq.NAME_PREFIX) and not f.endswith(STATE_SUFFIX)
            and not f.endswith(BRIDGE_SUFFIX)]


def _orphan_state_names():
    """Names whose NAME.consumers file exists without its ring."""
    try:
        files = set(os.listdir(SHM_DIR))
    except FileNotFoundError:
        return []
    prefix = shmq.NAME_PREFIX
    return sorted(f[len(prefix):-len(STATE_SUFFIX)] for f in files
                  if f.startswith(prefix) and f.endswith(STATE_SUFFIX)
                  and f[:-len(STATE_SUFFIX)] not in files)


def _read_state_header(fd):
    """The validated (entry_count, page_size) of a consumer-state file, or None."""
    raw = os.pread(fd, _STATE_HEADER.size, 0)
    if len(raw) != _STATE_HEADER.size:
        return None
    magic, _version, count, page, _reserved, _instance, total = _STATE_HEADER.unpack(raw)
    if magic != _STATE_MAGIC or not 1 <= count <= _STATE_ENTRIES_MAX:
        return None
    if page != os.sysconf("SC_PAGE_SIZE") or total != (2 + count) * page:
        return None
    if os.fstat(fd).st_size != total:
        return None
    return count, page


def _locked(fd, offset):
    probe = _FLOCK.pack(_F_WRLCK, _SEEK_SET, offset, 1, 0)
    l_type = _FLOCK.unpack(fcntl.fcntl(fd, _F_OFD_GETLK, probe))[0]
    return l_type != _F_UNLCK


def consumer_entries(name):
    """(entry_count, [live entries]) from NAME.consumers; (0, []) if it is absent or invalid."""
    try:
        fd = os.open(_path(name, STATE_SUFFIX), os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return 0, []
    try:
        header = _read_state_header(fd)
        if header is None:
            return 0, []
        count, page = header
        live = []
        for index in range(count):
            offset = (2 + index) * page
            if not _locked(fd, offset):
                continue
            raw = os.pread(fd, _STATE_ENTRY.size, offset)
            if len(raw) != _STATE_ENTRY.size:
                continue
            position, pid, _state, lost = _STATE_ENTRY.unpack(raw)
            live.append({"index": index, "pid": pid, "position": position, "lost": lost})
        return count, live
    except OSError:
        return 0, []
    finally:
        os.close(fd)


def _size(path):
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return 0


def describe(name, entries=False):
    """A dict describing one queue; raises NoQueue, or returns {"invalid": reason}."""
    ring = _path(name)
    try:
        st = os.stat(ring)
    except FileNotFoundError:
        raise NoQueue(name) from None
    info = {"name": name, "owner": _user(st.st_uid), "owner_uid": st.st_uid}
    try:
        # register=False: looking must not take a consumer entry.
        with shmq.Consumer(name, register=False) as c:
            info.update(slot_size=c.slot_size, capacity=c.capacity, head=c.position,
                        producer_alive=c.producer_alive, ended=c.ended,
                        owner=_user(c.owner_uid), owner_uid=c.owner_uid)
    except shmq.QueueNotFound:
        raise NoQueue(name) from None
    except (shmq.ShmqError, ValueError, OSError) as e:
        info.update(size=st.st_size, invalid=_reason(e))
        return info
    count, live = consumer_entries(name)
    info.update(size=st.st_size + _size(_path(name, STATE_SUFFIX)),
                consumers=len(live), consumer_entries=count)
    if entries:
        info["entries"] = [dict(e, lag=max(info["head"] - e["position"], 0)) for e in live]
        from . import bridge  # its status file needs no zenoh

        feed = bridge.status(name)
        if feed:
            info["bridge"] = {k: feed.get(k) for k in ("key", "pid", "received", "source_lost",
                                                       "transit_lost", "too_large", "resets",
                                                       "updated")}
    return info


def _reason(e):
    text = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
    return text.splitlines()[0] if text else type(e).__name__


def _producer_word(info):
    return "live" if info["producer_alive"] else "ended" if info["ended"] else "dead"


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
            with open(f"/proc/{pid}/maps", encoding="utf-8", errors="replace") as maps:
                for line in maps:
                    path = line.rstrip("\n").split(None, 5)[-1]
                    if not (path.startswith(prefix) and path.endswith(" (deleted)")):
                        continue
                    name = path[len(prefix):-len(" (deleted)")]
                    if name.endswith(STATE_SUFFIX):
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
    width = max(4, *(len(r["name"]) for r in rows))
    owner_w = max(5, *(len(r.get("owner", "-")) for r in rows))
    _emit(f"{'NAME':<{width}} {'OWNER':<{owner_w}} {'BYTES':>12} {'SLOT':>8} {'SLOTS':>9} "
          f"{'HEAD':>14} {'PRODUCER':<8} {'CONSUMERS':>9}", out)
    for r in rows:
        if r.get("unlinked"):
            pids = ", ".join(map(str, r["open_by"]))
            _emit(f"{r['name']:<{width}} {'-':<{owner_w}} {'-':>12} {'-':>8} {'-':>9} {'-':>14} "
                  f"{'-':<8} {'-':>9}  unlinked, still open by pid {pids}", out)
            continue
        lead = f"{r['name']:<{width}} {r['owner']:<{owner_w}} {r['size']:>12,}"
        if "invalid" in r:
            _emit(f"{lead} {'-':>8} {'-':>9} {'-':>14} {'-':<8} {'-':>9}  invalid: {r['invalid']}", out)
        else:
            _emit(f"{lead} {r['slot_size']:>8} {r['capacity']:>9} {r['head']:>14} "
                  f"{_producer_word(r):<8} {r['consumers']:>9}", out)
    return EXIT_OK


# ---------------------------------------------------------------- stat

def _head(name):
    try:
        with shmq.Consumer(name, register=False) as c:
            return c.position
    except shmq.QueueNotFound:
        raise NoQueue(name) from None


def stat_queue(name, as_json=False, watch=False, interval=1.0, out=sys.stdout) -> int:
    while True:
        before = describe(name)
        if "invalid" in before:
            raise shmq.IncompatibleQueue(f"{name}: not a usable queue: {before['invalid']}")
        t0 = time.monotonic()
        time.sleep(interval)
        info = describe(name, entries=True)
        if "invalid" in info:
            raise shmq.IncompatibleQueue(f"{name}: not a usable queue: {info['invalid']}")
        elapsed = time.monotonic() - t0
        info["interval"] = round(elapsed, 3)
        info["rate"] = max(info["head"] - before["head"], 0) / elapsed
        if as_json:
            _emit(json.dumps(info), out)
        else:
            _print_stat(info, out)
        if not watch:
            return EXIT_OK
        if not as_json:
            _emit("", out)


def _print_stat(info, out):
    state = _size(_path(info["name"], STATE_SUFFIX))
    lines = [
        ("queue", info["name"]),
        ("owner", f"{info['owner']} (uid {info['owner_uid']})"),
        ("size", f"{info['size']:,} bytes (ring {info['size'] - state:,}, consumer state {state:,})"),
        ("slots", f"{info['capacity']} x {info['slot_size']} bytes"),
        ("head", f"{info['head']}"),
        ("producer", _producer_word(info)),
        ("rate", f"{info['rate']:,.0f} msgs/s over {info['interval']:.1f} s"),
        ("consumers", f"{info['consumers']} live of {info['consumer_entries']} entries"),
    ]
    feed = info.get("bridge")
    if feed:
        lines.append(("bridge", f"in from {feed['key']} (pid {feed['pid']}): received "
                                f"{feed['received']}, source lost {feed['source_lost']}, "
                                f"transit lost {feed['transit_lost']}"))
    for key, value in lines:
        _emit(f"{key:<10} {value}", out)
    if info["entries"]:
        _emit(f"  {'ENTRY':>5} {'PID':>8} {'POSITION':>14} {'LAG':>12} {'LOST':>12}", out)
        for e in info["entries"]:
            _emit(f"  {e['index']:>5} {e['pid']:>8} {e['position']:>14} {e['lag']:>12} {e['lost']:>12}", out)


# ---------------------------------------------------------------- tail

def _format(fmt, seq, data):
    if fmt == "text":
        return data.decode("utf-8", "replace").rstrip("\n").replace("\n", "\\n")
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


def tail_queue(name, count=10, follow=False, fmt="text", out=sys.stdout, err=sys.stderr) -> int:
    try:
        with shmq.Consumer(name, register=False) as probe:
            head, capacity = probe.position, probe.capacity
        # Never start before the oldest slot still in the ring: that would
        # count as lost what was simply never asked for.
        start = max(head - count, head - capacity, 0)
        consumer = shmq.Consumer(name, start=start, register=False)
    except shmq.QueueNotFound:
        raise NoQueue(name) from None
    with consumer:
        lost = consumer.lost
        while True:
            data = consumer.poll(0.2 if follow else 0)
            if consumer.lost != lost:
                _emit(f"shmq tail: lost {consumer.lost - lost} messages (the producer lapped this reader)", err)
                lost = consumer.lost
            if data is None:
                if not follow or consumer.ended or consumer.unlinked:
                    return EXIT_OK
                continue
            _emit(_format(fmt, consumer.position - 1, data), out)


# ---------------------------------------------------------------- rm

def unlink_queues(names, force=False, stale=False, out=sys.stdout, err=sys.stderr) -> int:
    status = EXIT_OK
    missing = False
    for name in names:
        try:
            shmq.unlink(name, force=force)
            _remove_bridge_status(name)
            _emit(f"removed {name}", out)
        except shmq.QueueNotFound:
            _emit(f"shmq rm: no queue {name!r}", err)
            missing = True
        except shmq.ProducerBusy:
            _emit(f"shmq rm: {name}: a live producer holds it (use --force to remove it anyway)", err)
            status = EXIT_FAILED
        except (shmq.ShmqError, ValueError, OSError) as e:
            _emit(f"shmq rm: {name}: {_reason(e)}", err)
            status = EXIT_FAILED
    if stale:
        status = max(status, _remove_stale(out, err))
    if status == EXIT_OK and missing:
        return EXIT_NO_QUEUE
    return status


def _remove_stale(out, err) -> int:
    status = EXIT_OK
    for name in queue_names():
        try:
            info = describe(name)
        except NoQueue:
            continue
        if "invalid" in info or info["producer_alive"]:
            continue  # not ours to judge, or in use
        try:
            shmq.unlink(name)  # refuses if a producer took it meanwhile
            _remove_bridge_status(name)
            _emit(f"removed {name}", out)
        except shmq.QueueNotFound:
            pass
        except (shmq.ShmqError, ValueError, OSError) as e:
            _emit(f"shmq rm: {name}: {_reason(e)}", err)
            status = EXIT_FAILED
    for name in _orphan_state_names():
        path = _path(name, STATE_SUFFIX)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                ours = _read_state_header(fd) is not None
            finally:
                os.close(fd)
            if ours and not os.path.exists(_path(name)):
                os.unlink(path)
                _emit(f"removed {name}{STATE_SUFFIX} (its queue is gone)", out)
        except FileNotFoundError:
            pass
        except OSError as e:
            _emit(f"shmq rm: {name}{STATE_SUFFIX}: {_reason(e)}", err)
            status = EXIT_FAILED
    return status
