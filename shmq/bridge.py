"""shmq bridge: carry one queue to other hosts over Zenoh, with its sequence and losses.

Two halves, each its own process (or a thread of yours):

    out   a consumer of the local queue NAME (register=True, so `shmq stat`
          shows it and its lag) that publishes every message to a Zenoh key
          expression, many small messages to a sample;
    in    a subscriber to that key expression that republishes into a local
          queue as its only producer.

Wire format, version 1 (little-endian). A sample is a header, a table of
lengths, then the messages back to back:

    offset  size
         0     2   magic 0x5153 ("SQ")
         2     1   version (1)
         3     1   flags (0; a receiver ignores bits it does not know)
         4     4   count: messages in this sample
         8     8   stream: random id of one out-side reading of the queue
        16     8   first: source sequence number of the first message
        24     8   lost: messages the out side's consumer has lost to overrun
                   since this stream began, up to the first message
        32     4   max_message_size of the source queue (its largest message)
        36     4   capacity of the source queue
        40  4*count  length of each message
         .     .   the messages

The messages of one sample are consecutive in the source: the out side
closes a sample before a poll that found itself lapped, so a sample never
spans a gap. (If the out side is lapped in the middle of one poll, the gap is
reported before that poll's first message: the count is exact, its place in
the stream may be off by at most one poll.) A table of lengths rather than a
length before each message lets both sides handle a sample with one call
rather than one per message.

A stream is one reading of one incarnation of the queue. The out side keeps
its stream id, the next sequence to send and its lost count in its own
status file, /dev/shm/shmq-NAME~out-HASH.bridge (HASH: of the key), written
at least every half second. A restarted `bridge out` continues that stream
from there when the queue is still the same file (same device and inode,
same geometry); what it sends a second time the in side skips, and counts
in `duplicates`. Otherwise it starts a new stream at `start`.

The in side trusts nothing in a sample: anyone who can reach the Zenoh
network may have sent it. A sample counts as `malformed`, and changes
nothing else, unless it has the magic and version; 1 <= count; a table that
fits; lengths that add up to the sample and none above its largest
message; 1 <= largest message (a u32); a capacity that is a power of two from 2 to
CAPACITY_MAX; first + count <= 2^64; lost <= first; for a stream it knows,
the largest message and capacity it began with; and a first sequence within reach
of where the stream stands (below). The far ring's geometry comes only from
the receiver's own options, never from a sample.

Reach: a source publishes fewer than 2^30 messages a second, so between two
samples of a stream its sequence moves at most 2^30 per second that passed
since the earlier one (plus 2^32 to spare for samples that queued up on the
way). A sample whose first lies further from the stream's next expected
sequence, either way, is malformed rather than a gap. A real jump that far
(a source stalled for long) is refused only until the reach has grown past
it, so a stream never gets stuck.

Loss. The in side knows, per stream (the 16 heard from most recently), the
next source sequence it expects. A sample whose first sequence lies ahead of
it opens a gap of (first - expected) messages; the growth of `lost` since
the stream's last sample says how many of those the out side lost at the
source (`source_lost`, at most the gap); the rest were lost on the way, to a
restart of either half or of Zenoh, or to a sample Zenoh dropped
(`transit_lost`). A sample that lies (partly) behind it was seen already:
those messages are skipped and counted in `duplicates`. A stream the in side
does not know is measured against the stream it heard last: a start ahead
of it counts the gap (an out side restarted at "latest" missed it), one
behind it is the queue itself made anew, counted in `resets`. A stream it
knows is always measured against itself, so a second stream (or a forged
one) makes the real one count no loss while the real one is among the 16.

The in side's counters live in /dev/shm/shmq-NAME.bridge, a small JSON file
(read it with `status(NAME)`). It also anchors a restart: it is rewritten
every half second and before the far queue gets the first message after any
discontinuity (a gap, a message too large, another stream), and pairs the
far queue's next sequence with the source sequence of the message that will
get it. Between two records the two advance together, so a restarted
`bridge in` knows exactly which source sequence comes next. Status files are
read only when they are regular files owned by this user, at most 64 KiB,
opened without following links or blocking; they are written through a
fresh randomly named temporary (O_EXCL | O_NOFOLLOW, mode 0600), then
renamed into place.

Loss accounting, end to end: a far consumer's `lost` counts only overruns of
the far ring. Messages lost between the source and a far consumer are
far `lost` + the bridge's `source_lost` + `transit_lost` + `too_large` (the
messages larger than the far queue's max_message_size, dropped) + `dropped` (messages
taken but not yet republished into a full lossless far queue when the in
side was stopped), counted from the first sample the in side received.

Samples arrive on Zenoh's callback thread, one after another. A lossless far
queue whose consumers do not read holds that thread back (and with it the
link and the out side, so that loss happens in the source ring, where it is
counted exactly), but only in slices of 0.1 s between which it checks for
stop(): close() and a signal end the bridge within about that long.

Zenoh carries the data in the clear unless a --zenoh-config file configures
TLS or mTLS (see docs/bridge.md). Messages go to the logger "shmq.bridge":
losses, resets and malformed samples as warnings, at most one line each ten
seconds.

This module imports zenoh only when a bridge is made, so `status()` works
without it.
"""
import argparse
import array
import collections
import hashlib
import json
import logging
import os
import random
import secrets
import signal
import socket
import stat
import struct
import sys
import threading
import time

import shmq

__all__ = ["Forwarder", "Receiver", "forward", "receive", "status", "remove_status",
           "BridgeError", "main"]

log = logging.getLogger("shmq.bridge")

MAGIC = 0x5153
VERSION = 1
HEADER = struct.Struct("<HBBIQQQII")
STATUS_SUFFIX = ".bridge"
# The out side's status file is shmq-NAME~out-HASH.bridge: "~" is no queue-name
# character, so no queue's in-side status file can have such a name.
OUT_MARK = "~out-"
SHM_DIR = "/dev/shm"

DEFAULT_BATCH = 256
DEFAULT_BATCH_BYTES = 64 * 1024
DEFAULT_LINGER_US = 0
# A poll that waits for the first message of a sample returns at least this
# often, so close() and the end of a queue are noticed.
_IDLE_SLICE = 0.1
_STATUS_PERIOD = 0.5
# Losses, resets and malformed samples are logged at most this often.
_REPORT_PERIOD = 10.0
# The in side waits for room in a lossless far queue in slices this long.
_PUBLISH_SLICE = 0.1
# A status file is a few hundred bytes: anything larger is not one.
_STATUS_MAX = 64 * 1024
_SEQ_END = 1 << 64
# Reach (see above): how far a sample's first sequence may lie from where its
# stream stands, _JUMP_SLACK plus _MAX_RATE for each second since the
# stream's last sample.
_JUMP_SLACK = 1 << 32
_MAX_RATE = 1 << 30
_MAX_STREAMS = 16
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
_PROTOCOLS = ("tcp", "udp", "tls", "quic", "ws", "unixsock-stream", "unixpipe", "serial", "vsock")

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class BridgeError(shmq.ShmqError, ValueError):
    """A bridge cannot start: bad endpoint, key expression or Zenoh configuration."""


def _zenoh():
    try:
        import zenoh  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        raise BridgeError("the bridge needs eclipse-zenoh: pip install 'shmq[bridge]'") from None
    return zenoh


def _first_line(e):
    # Zenoh's messages end with " at /path/to/source.rs:LINE"; the path is noise.
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    cut = text.find(" at /")
    return text[:cut] if cut > 0 else text


# ---------------------------------------------------------------- set-up

def check_endpoint(endpoint):
    """Raise BridgeError unless endpoint reads like PROTO/HOST:PORT and HOST resolves.

    Zenoh retries a connect endpoint forever without complaint, so a typo
    would look like a far side that is down; this catches it at start.
    """
    address = endpoint.split("#", 1)[0].split("?", 1)[0]
    proto, sep, rest = address.partition("/")
    if not sep or proto not in _PROTOCOLS:
        raise BridgeError(f"bad endpoint {endpoint!r}: expected PROTO/HOST:PORT, "
                          f"PROTO one of {', '.join(_PROTOCOLS[:5])}, ...")
    if proto not in ("tcp", "udp", "tls", "quic", "ws"):
        return
    host, colon, port = rest.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not colon or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise BridgeError(f"bad endpoint {endpoint!r}: expected {proto}/HOST:PORT")
    try:
        socket.getaddrinfo(host, int(port))
    except (socket.gaierror, UnicodeError) as e:
        raise BridgeError(f"bad endpoint {endpoint!r}: {host}: {e.strerror if hasattr(e, 'strerror') else e}") from None


def check_key(key):
    """Raise BridgeError unless key is a valid Zenoh key expression."""
    zenoh = _zenoh()
    try:
        zenoh.KeyExpr(key)
    except Exception as e:  # zenoh.ZError
        raise BridgeError(f"bad key expression {key!r}: {_first_line(e).removeprefix('Invalid Key Expr ')}") from None


def _as_list(endpoints):
    if endpoints is None:
        return []
    return [endpoints] if isinstance(endpoints, str) else list(endpoints)


def open_session(connect=None, listen=None, config=None):
    """A Zenoh session in peer mode: config file first, then the endpoints given.

    Without a config file, multicast scouting is off, so the bridge talks only
    to the endpoints named.
    """
    zenoh = _zenoh()
    connect, listen = _as_list(connect), _as_list(listen)
    for endpoint in connect + listen:
        check_endpoint(endpoint)
    try:
        if config is not None:
            conf = zenoh.Config.from_file(os.fspath(config))
        else:
            conf = zenoh.Config()
            conf.insert_json5("mode", '"peer"')
            conf.insert_json5("scouting/multicast/enabled", "false")
            # Zenoh's own shared-memory transport would leave files in /dev/shm
            # and is of no use between hosts.
            conf.insert_json5("transport/shared_memory/enabled", "false")
        if connect:
            conf.insert_json5("connect/endpoints", json.dumps(connect))
        if listen:
            conf.insert_json5("listen/endpoints", json.dumps(listen))
    except Exception as e:
        raise BridgeError(f"zenoh config: {_first_line(e)}") from None
    try:
        return zenoh.open(conf)
    except Exception as e:
        raise BridgeError(f"zenoh: {_first_line(e)}") from None


# ---------------------------------------------------------------- status files

def _is_u64(value):
    return type(value) is int and 0 <= value < _SEQ_END


def _valid_name(name):
    return (isinstance(name, str) and 0 < len(name) <= shmq.NAME_MAX and name[0].isalnum()
            and _NAME_CHARS.issuperset(name))


def _status_path(name):
    return os.path.join(SHM_DIR, shmq.NAME_PREFIX + name + STATUS_SUFFIX)


def _out_status_path(name, key):
    digest = hashlib.blake2b(key.encode(), digest_size=8).hexdigest()
    return os.path.join(SHM_DIR, f"{shmq.NAME_PREFIX}{name}{OUT_MARK}{digest}{STATUS_SUFFIX}")


def _queue_id(name):
    """[device, inode] of queue name's segment, or None: tells one incarnation of a name from another."""
    try:
        st = os.stat(os.path.join(SHM_DIR, shmq.NAME_PREFIX + name), follow_symlinks=False)
    except OSError:
        return None
    return [st.st_dev, st.st_ino]


def _read_record(path):
    """The version-1 JSON object in path, or None unless path is a regular file of ours.

    Anyone may plant a name in sticky /dev/shm: a symlink (not followed), a
    FIFO (opened without blocking, then refused), another user's file or a
    huge one all read as None, at once.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_size > _STATUS_MAX:
            return None
        raw = b""
        while len(raw) <= _STATUS_MAX:
            chunk = os.read(fd, _STATUS_MAX + 1 - len(raw))
            if not chunk:
                break
            raw += chunk
        record = json.loads(raw) if len(raw) <= _STATUS_MAX else None
    except (OSError, ValueError, RecursionError):
        return None
    finally:
        os.close(fd)
    return record if isinstance(record, dict) and record.get("version") == 1 else None


def _write_record(path, record):
    """Replace path with record as JSON, atomically; raises OSError.

    The temporary has a random name and is created exclusively without
    following links, so nothing planted in /dev/shm can redirect the write;
    rename() then replaces whatever sits at path (a link is replaced, not
    followed). The name does not start with shmq-, so no tool takes it for a
    queue.
    """
    data = json.dumps(record).encode()
    tmp = os.path.join(SHM_DIR, f".shmq-bridge-{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        try:
            os.fchmod(fd, 0o600)  # whatever the umask
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        os.rename(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def status(name):
    """The counters `bridge in` keeps for queue name, as a dict, or None if it has none.

    Only a regular file owned by this user, at most 64 KiB, counts; a link,
    FIFO or anything else under that name reads as None, without blocking.
    """
    return _read_record(_status_path(name)) if _valid_name(name) else None


def remove_status(name):
    """Remove the status files of queue name: its `bridge in`'s and every `bridge out`'s."""
    if not _valid_name(name):
        return
    prefix = shmq.NAME_PREFIX + name + OUT_MARK
    try:
        outs = [f for f in os.listdir(SHM_DIR) if f.startswith(prefix) and f.endswith(STATUS_SUFFIX)]
    except FileNotFoundError:
        outs = []
    for path in [_status_path(name)] + [os.path.join(SHM_DIR, f) for f in outs]:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


class _Side:
    """What both sides share: run() in a thread until stop() or close(), and reports."""

    _REPORTED: "tuple[str, ...]" = ()   # the counters whose growth is logged

    def _init_reports(self):
        self._reported = {f: getattr(self, f) for f in self._REPORTED}
        self._reported_at = -_REPORT_PERIOD
        self._said = set()

    def _report(self, force=False):
        """Log what the loss counters gained since the last report, at most every _REPORT_PERIOD."""
        now = time.monotonic()
        if not force and now - self._reported_at < _REPORT_PERIOD:
            return
        counts = {f: getattr(self, f) for f in self._REPORTED}
        grown = {f: n - self._reported[f] for f, n in counts.items() if n != self._reported[f]}
        if grown:
            self._reported, self._reported_at = counts, now
            self._log_report(grown, counts)

    def _say_once(self, what, level, text, *args):
        if what not in self._said:
            self._said.add(what)
            log.log(level, text, *args)

    def stop(self):
        """Ask run() to return soon (within about 0.1 s); safe in a signal handler."""
        self._stop.set()

    def close(self):
        """Stop run() (waiting up to 5 s for it), then release everything. Idempotent."""
        self._stop.set()
        deadline = time.monotonic() + 5
        while self._running and time.monotonic() < deadline:
            time.sleep(0.01)
        self._finish()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# ---------------------------------------------------------------- out

class Forwarder(_Side):
    """Forward local queue `name` to Zenoh key expression `key`.

    Opens the Zenoh session at once (so a bad endpoint or key fails here);
    run() attaches to the queue, waiting up to `wait` seconds for it to exist
    (None: forever), and forwards until close(). With status_file (the
    default) it keeps its stream and position in /dev/shm and a later
    Forwarder of the same queue and key continues from there; `start`
    applies only when there is nothing to continue. Thread-safe: close() and
    stop() may be called from any thread or a signal handler.
    """

    _REPORTED = ("source_lost",)

    def __init__(self, name, key, *, connect=None, listen=None, batch=DEFAULT_BATCH,
                 batch_bytes=DEFAULT_BATCH_BYTES, linger_us=DEFAULT_LINGER_US, config=None,
                 start="latest", wait=None, status_file=True):
        if batch < 1 or batch_bytes < 1 or linger_us < 0:
            raise BridgeError("batch and batch_bytes must be at least 1, linger_us at least 0")
        check_key(key)
        self.name, self.key = name, key
        self.batch, self.batch_bytes, self.linger = batch, batch_bytes, linger_us / 1e6
        self.start, self.wait = start, wait
        self.forwarded = 0      # messages sent
        self.samples = 0        # Zenoh samples sent
        self.source_lost = 0    # lost by this bridge's consumer, over all its attachments
        self.attachments = 0
        self.resumed = 0        # attachments that continued a saved stream
        self._lost_before = 0   # source_lost of earlier attachments
        self._status_file = status_file
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._consumer = None
        self._running = False
        self._init_reports()
        self._session = open_session(connect, listen, config)
        zenoh = _zenoh()
        try:
            # BLOCK: a slow link holds the bridge back, so that loss happens
            # where it is counted exactly, in the source ring.
            self._pub = self._session.declare_publisher(
                key, congestion_control=zenoh.CongestionControl.BLOCK)
        except Exception as e:
            self._session.close()
            raise BridgeError(f"zenoh: {_first_line(e)}") from None

    @property
    def matched(self):
        """Whether some subscriber of the key is known to this side's Zenoh."""
        try:
            return bool(self._pub.matching_status.matching)
        except Exception:
            return False

    @property
    def position(self):
        c = self._consumer
        return c.position if c is not None else None

    def _saved(self):
        """The stream a previous Forwarder of this queue and key left, validated, or None."""
        if not self._status_file or not _valid_name(self.name):
            return None
        record = _read_record(_out_status_path(self.name, self.key))
        if not record or record.get("queue") != self.name or record.get("key") != self.key:
            return None
        fields = ("stream", "position", "lost", "slot_size", "capacity")
        queue_id = record.get("queue_id")
        if not all(_is_u64(record.get(f)) for f in fields) or not (
                isinstance(queue_id, list) and len(queue_id) == 2 and all(map(_is_u64, queue_id))):
            return None
        return record

    def _attach(self, start, saved):
        """(consumer, stream, lost before it, queue id, resumed), or None if stopped while waiting."""
        deadline = None if self.wait is None else time.monotonic() + self.wait
        while True:
            resume = saved is not None and _queue_id(self.name) == saved["queue_id"]
            try:
                consumer = shmq.Consumer(self.name, start=saved["position"] if resume else start,
                                         register=True)
            except shmq.QueueNotFound:
                if self._stop.is_set():
                    return None
                if deadline is not None and time.monotonic() >= deadline:
                    raise shmq.QueueNotFound(f"no queue {self.name!r} (waited {self.wait:g} s)") from None
                time.sleep(0.05)
                continue
            # The id is this consumer's queue's only if the name still led there
            # after it was read: check unlinked after _queue_id, not before.
            queue_id = _queue_id(self.name)
            if consumer.unlinked:
                queue_id = None
            if not resume:
                return consumer, random.getrandbits(64), 0, queue_id, False
            if queue_id == saved["queue_id"] and (consumer.max_message_size, consumer.capacity) == (
                    saved["slot_size"], saved["capacity"]):
                return consumer, saved["stream"], saved["lost"], queue_id, True
            consumer.close()   # the queue changed under us: start afresh
            saved = None

    def run(self):
        """Forward until close() or stop(); returns the number of messages forwarded."""
        with self._lock:
            if self._pub is None:
                raise ValueError("bridge is closed")
            self._running = True
        try:
            self._forward()
        finally:
            self._running = False
            if self._stop.is_set():
                self._finish()
        return self.forwarded

    def _forward(self):
        start, saved = self.start, self._saved()
        while not self._stop.is_set():
            attached = self._attach(start, saved)
            if attached is None:
                return
            consumer, stream, lost_before, queue_id, resumed = attached
            saved = None
            self._consumer = consumer
            self.attachments += 1
            self.resumed += resumed
            log.info("%s: %s stream %016x at sequence %d", self.name,
                     "continuing" if resumed else "starting", stream, consumer.position)
            # A queue made anew after an unlink starts from its beginning.
            start = "earliest"
            try:
                self._stream(consumer, stream, lost_before, queue_id)
            finally:
                self._lost_before += consumer.lost
                self._consumer = None
                if consumer.unlinked and not self._stop.is_set():
                    log.warning("%s: the queue was unlinked; waiting for it to be made again", self.name)
                consumer.close()

    def _stream(self, consumer, stream, lost_before, queue_id):
        # "slot" on the wire: the source's largest message.
        slot, capacity = consumer.max_message_size, consumer.capacity
        budget = max(self.batch_bytes, 1)
        buf = bytearray(budget + slot)   # room for one more whole message past the budget
        view = memoryview(buf)
        lengths = []
        used = first = batch_lost = 0
        pub, batch_max, linger = self._pub, self.batch, self.linger
        monotonic = time.monotonic
        # Where a later Forwarder continues this stream: the next sequence to
        # send and the stream's lost count up to it; saved when it moved.
        sent = [consumer.position, lost_before]
        moved = True
        next_save = monotonic() + _STATUS_PERIOD

        def save():
            nonlocal moved, next_save
            moved, next_save = False, monotonic() + _STATUS_PERIOD
            if not self._status_file or queue_id is None:
                return
            record = {"version": 1, "side": "out", "queue": self.name, "key": self.key,
                      "pid": os.getpid(), "updated": time.time(), "stream": stream,
                      "position": sent[0], "lost": sent[1], "slot_size": slot, "capacity": capacity,
                      "queue_id": queue_id}
            try:
                _write_record(_out_status_path(self.name, self.key), record)
            except OSError as e:
                self._say_once("status", logging.WARNING, "%s: cannot write the status file, "
                               "so a restart cannot continue this stream: %s", self.name, e)

        def send():
            nonlocal lengths, used, moved
            table = array.array("I", lengths)
            if sys.byteorder == "big":
                table.byteswap()
            head = HEADER.pack(MAGIC, VERSION, 0, len(lengths), stream, first,
                               lost_before + batch_lost, slot, capacity)
            pub.put(b"".join((head, table, view[:used])))
            self.forwarded += len(lengths)
            self.samples += 1
            sent[:] = first + len(lengths), lost_before + batch_lost
            moved = True
            lengths, used = [], 0

        try:
            while not self._stop.is_set():
                lost = consumer.lost
                got = consumer.poll_many_into(view, batch_max, _IDLE_SLICE)
                if not got:
                    if consumer.unlinked:
                        return
                    if moved:
                        save()
                    continue
                first = consumer.position - len(got)
                batch_lost = consumer.lost
                used, lengths = sum(got), got
                deadline = monotonic() + linger
                while len(lengths) < batch_max and used < budget and not self._stop.is_set():
                    left = deadline - monotonic()
                    if left <= 0:
                        break
                    lost = consumer.lost
                    more = consumer.poll_many_into(view[used:], batch_max - len(lengths), left)
                    if not more:
                        break
                    size = sum(more)
                    if consumer.lost != lost:
                        # Lapped: what this poll got follows a gap, so it starts the next sample.
                        kept = bytes(view[used:used + size])
                        send()
                        view[:size] = kept
                        first = consumer.position - len(more)
                        batch_lost = consumer.lost
                        used, lengths = size, more
                        deadline = monotonic() + linger
                        continue
                    used += size
                    lengths = lengths + more
                send()
                self.source_lost = self._lost_before + consumer.lost
                if monotonic() >= next_save:
                    save()
                    self._report()
        finally:
            save()
            self.source_lost = self._lost_before + consumer.lost
            self._report(force=True)

    def _log_report(self, grown, counts):
        log.warning("%s: lost %d messages to overruns of the source ring (%d in all): "
                    "its producer laps this bridge", self.name, grown["source_lost"],
                    counts["source_lost"])

    def _finish(self):
        with self._lock:
            pub, session = self._pub, self._session
            self._pub = self._session = None
        if pub is not None:
            try:
                pub.undeclare()
            except Exception:
                pass
        if session is not None:
            session.close()

    def counters(self):
        return {"forwarded": self.forwarded, "samples": self.samples,
                "source_lost": self.source_lost, "attachments": self.attachments,
                "resumed": self.resumed}


def forward(name, key, **kwargs):
    """A Forwarder for queue name to key (see Forwarder); call .run() in a thread."""
    return Forwarder(name, key, **kwargs)


# ---------------------------------------------------------------- in

_COUNTERS = ("received", "samples", "source_lost", "transit_lost", "too_large", "resets",
             "malformed", "duplicates", "dropped")


class _Stream:
    """What the in side knows of one stream."""

    __slots__ = ("expected", "lost", "slot", "capacity", "seen")

    def __init__(self, expected, lost, slot, capacity, seen):
        self.expected = expected    # next source sequence expected
        self.lost = lost            # its lost counter at its last sample
        self.slot, self.capacity = slot, capacity
        self.seen = seen            # time.monotonic() of its last sample

    def reach(self, now):
        """How far from expected the next sample's first may lie (see the module doc)."""
        return _JUMP_SLACK + _MAX_RATE * max(now - self.seen, 0.0)


def _parse(data):
    """(stream, first, lost, slot, capacity, lengths, body offset) of a well-formed sample, or None."""
    if len(data) < HEADER.size:
        return None
    magic, version, _flags, count, stream, first, lost, slot, capacity = HEADER.unpack_from(data)
    body = HEADER.size + 4 * count
    if (magic != MAGIC or version != VERSION or count < 1 or body > len(data)
            or slot < 1
            or not 2 <= capacity <= shmq.CAPACITY_MAX or capacity & (capacity - 1)
            or first + count > _SEQ_END or lost > first):
        return None
    table = array.array("I")
    table.frombytes(data[HEADER.size:body])
    if sys.byteorder == "big":
        table.byteswap()
    if max(table) > slot or body + sum(table) != len(data):
        return None
    return stream, first, lost, slot, capacity, table, body


class Receiver(_Side):
    """Republish what arrives on Zenoh key expression `key` into local queue `to`.

    The queue is opened at once as its only producer: continued if it exists
    (slot_size, capacity and lossless, when given, must match it), otherwise
    created with them (shmq's defaults where None). Samples never choose the
    geometry. They are handled on Zenoh's thread as they arrive; run() keeps
    the status file fresh and logs losses until close().
    Counters: received (messages republished), source_lost, transit_lost,
    too_large, resets, malformed (samples refused), duplicates (messages
    seen already, skipped), dropped (taken, then given up when stopping with
    a full lossless far queue).
    """

    _REPORTED = ("source_lost", "transit_lost", "resets", "malformed", "too_large", "dropped",
                 "duplicates")

    def __init__(self, key, to, *, connect=None, listen=None, slot_size=None, capacity=None,
                 lossless=None, config=None, status_file=True):
        check_key(key)
        self.key, self.to = key, to
        self._status_file = status_file
        self.received = self.samples = 0
        self.source_lost = self.transit_lost = self.too_large = self.resets = self.malformed = 0
        self.duplicates = self.dropped = 0
        self._streams = collections.OrderedDict()   # id -> _Stream, least recently heard first
        self._current = None    # the stream of the last sample taken
        self._anchor = None     # (stream, source sequence) of the far queue's next message
        self._lock = threading.Lock()           # counters and stream state, held briefly
        self._publish_lock = threading.Lock()   # one sample at a time into the far queue
        self._stop = threading.Event()
        self._closed = False
        self._running = False
        self._error = None
        self._sub = None
        self._session = open_session(connect, listen, config)
        try:
            self._producer = shmq.Producer(to, slot_size, capacity, lossless=lossless)
        except BaseException:
            self._session.close()
            raise
        self._far_slot = self._producer.max_message_size
        self._far_next = self._producer.next_sequence   # we are its only producer
        self._far_id = _queue_id(to)
        self._restore()
        self._init_reports()
        try:
            self._sub = self._session.declare_subscriber(key, self._on_sample)
        except Exception as e:
            self._session.close()
            self._producer.close()
            raise BridgeError(f"zenoh: {_first_line(e)}") from None

    @property
    def slot_size(self):
        return self._far_slot

    @property
    def capacity(self):
        return self._producer.capacity

    @property
    def lossless(self):
        return self._producer.lossless

    @property
    def expected(self):
        """The next source sequence expected on the stream heard last, or None before the first sample."""
        st = self._streams.get(self._current)
        return st.expected if st is not None else None

    def _restore(self):
        """Continue the counters, streams and anchor of an earlier run, if its record holds together."""
        old = status(self.to) if self._status_file else None
        if not old or old.get("key") != self.key or old.get("queue") != self.to:
            return
        if not all(_is_u64(old.get(field, 0)) for field in _COUNTERS):
            return
        now, wall = time.monotonic(), time.time()
        streams = collections.OrderedDict()
        entries = old.get("streams")
        for entry in entries[-_MAX_STREAMS:] if isinstance(entries, list) else ():
            if not (isinstance(entry, list) and len(entry) == 6):
                return
            sid, expected, lost, slot, capacity, seen = entry
            if not (all(map(_is_u64, (sid, expected, lost, slot, capacity)))
                    and type(seen) in (int, float) and abs(seen) < 1e12):
                return
            streams[sid] = _Stream(expected, lost, slot, capacity, now - max(wall - seen, 0.0))
        for field in _COUNTERS:
            setattr(self, field, old.get(field, 0))
        cur, anchor, far_next = old.get("stream"), old.get("expected"), old.get("far_next")
        if (cur in streams and _is_u64(anchor) and _is_u64(far_next)
                and self._far_id is not None and old.get("far_id") == self._far_id
                and far_next <= self._far_next):
            # Between two records the far queue and the source advance together.
            streams[cur].expected = anchor + (self._far_next - far_next)
            streams.move_to_end(cur)
            self._current, self._anchor = cur, (cur, streams[cur].expected)
        else:
            streams.pop(cur, None)   # no anchor that fits this far queue: that stream starts afresh
        self._streams = streams

    def _record(self):
        now, wall = time.monotonic(), time.time()
        stream, anchor = self._anchor or (None, None)
        st = self._streams.get(stream)
        record = {"version": 1, "key": self.key, "queue": self.to, "pid": os.getpid(),
                  "updated": wall}
        record.update((field, getattr(self, field)) for field in _COUNTERS)
        record.update(stream=stream, expected=anchor, lost_seen=st.lost if st else None,
                      far_next=self._far_next, far_id=self._far_id,
                      streams=[[sid, s.expected, s.lost, s.slot, s.capacity, wall - (now - s.seen)]
                               for sid, s in self._streams.items()])
        return record

    def _save(self):
        # Caller holds self._lock.
        if not self._status_file:
            return
        try:
            _write_record(_status_path(self.to), self._record())
        except OSError as e:   # the counters stay on the object
            self._say_once("status", logging.WARNING, "%s: cannot write the status file: %s", self.to, e)

    def _move_anchor(self, stream, seq):
        # Caller holds self._lock. A record is written before the far queue
        # gets a message that does not follow the anchor, so that between two
        # records the far queue and the source advance together.
        if self._anchor != (stream, seq):
            self._anchor = (stream, seq)
            self._save()

    def _on_sample(self, sample):
        try:
            data = sample.payload.to_bytes()
            # Zenoh calls this on one thread, one sample after another; the
            # lock keeps them in order even if it did not.
            while not self._publish_lock.acquire(timeout=_PUBLISH_SLICE):
                if self._stop.is_set():
                    return
            try:
                with self._lock:
                    if self._closed or self._stop.is_set():
                        return   # not taken: a restart counts it in transit_lost
                    taken = self._take(data)
                if taken is not None:
                    self._publish(*taken)
            finally:
                self._publish_lock.release()
        except Exception as e:  # never let one sample kill Zenoh's thread
            self._error = e
            self._say_once(type(e), logging.ERROR, "%s: a sample could not be handled: %s: %s",
                           self.to, type(e).__name__, _first_line(e))

    def _take(self, data):
        """Check one sample and count it; return (stream, runs, end) to publish, or None.

        runs: (source sequence, [messages consecutive from it]); end: the
        stream's next expected sequence once they are out. Caller holds self._lock.
        """
        parsed = _parse(data)
        if parsed is None:
            self.malformed += 1
            return None
        stream, first, lost, slot, capacity, table, body = parsed
        now = time.monotonic()
        st = self._streams.get(stream)
        gap = skip = from_source = 0
        if st is not None:
            if (slot, capacity) != (st.slot, st.capacity) or abs(first - st.expected) > st.reach(now):
                self.malformed += 1
                return None
            if first >= st.expected:
                gap = first - st.expected
                from_source = min(max(lost - st.lost, 0), gap)
                st.lost = lost
            else:
                skip = min(st.expected - first, len(table))
        else:
            last = self._streams.get(self._current)
            if last is not None:
                ahead = first - last.expected
                if ahead > last.reach(now):
                    self.malformed += 1
                    return None
                if ahead < 0:
                    self.resets += 1    # the source queue made anew (or a stream of someone else's)
                else:
                    gap, from_source = ahead, min(lost, ahead)
            st = self._streams[stream] = _Stream(first, lost, slot, capacity, now)
            while len(self._streams) > _MAX_STREAMS:
                self._streams.popitem(last=False)
            log.debug("%s: new stream %016x at %d (gap %d)", self.to, stream, first, gap)
        self._streams.move_to_end(stream)
        self._current = stream
        st.seen = now
        st.expected = max(st.expected, first + len(table))
        self.samples += 1
        self.source_lost += from_source
        self.transit_lost += gap - from_source
        self.duplicates += skip
        if gap:
            log.debug("%s: stream %016x: gap of %d before %d (%d at the source)",
                      self.to, stream, gap, first, from_source)
        view = memoryview(data)
        runs = []
        offset = body
        for i, length in enumerate(table):
            if i >= skip:
                if length > self._far_slot:
                    self.too_large += 1
                elif runs and runs[-1][0] + len(runs[-1][1]) == first + i:
                    runs[-1][1].append(view[offset:offset + length])
                else:
                    runs.append((first + i, [view[offset:offset + length]]))
            offset += length
        return stream, runs, st.expected

    def _publish(self, stream, runs, end):
        """Publish runs into the far queue; caller holds self._publish_lock.

        Waits for room in slices, so that stop() ends it within one; what is
        left then is counted in `dropped`.
        """
        producer = self._producer
        for i, (seq, messages) in enumerate(runs):
            with self._lock:
                self._move_anchor(stream, seq)
            done = 0
            while done < len(messages):
                try:
                    producer.publish_many(messages[done:] if done else messages, timeout=_PUBLISH_SLICE)
                    n = len(messages) - done
                except shmq.Full as e:
                    n = e.published
                with self._lock:
                    self.received += n
                    self._far_next += n
                    self._anchor = (stream, self._anchor[1] + n)
                done += n
                if done < len(messages) and self._stop.is_set():
                    left = len(messages) - done + sum(len(m) for _, m in runs[i + 1:])
                    with self._lock:
                        self.dropped += left
                        self._move_anchor(stream, end)
                    log.warning("%s: stopped while the far queue was full: dropped %d messages",
                                self.to, left)
                    return
        with self._lock:
            self._move_anchor(stream, end)

    def run(self):
        """Keep the status file fresh and log losses until close() or stop(); then close."""
        self._running = True
        try:
            while not self._stop.wait(_STATUS_PERIOD):
                with self._lock:
                    self._save()
                    self._report()
        finally:
            self._running = False
            self._finish()

    def _log_report(self, grown, counts):
        parts = []
        lost = grown.get("source_lost", 0) + grown.get("transit_lost", 0)
        if lost:
            parts.append(f"lost {lost} messages ({grown.get('source_lost', 0)} at the source, "
                         f"{grown.get('transit_lost', 0)} in transit)")
        for field, text in (("resets", "resets (a new stream behind the last one: the source "
                                       "queue made anew)"),
                            ("malformed", "malformed samples refused"),
                            ("too_large", "messages larger than the far max_message_size dropped"),
                            ("dropped", "messages dropped when stopping"),
                            ("duplicates", "messages seen already skipped")):
            if grown.get(field):
                parts.append(f"{grown[field]} {text}")
        level = logging.INFO if set(grown) == {"duplicates"} else logging.WARNING
        log.log(level, "%s: %s; in all: source_lost %d, transit_lost %d, resets %d, malformed %d",
                self.to, "; ".join(parts), counts["source_lost"], counts["transit_lost"],
                counts["resets"], counts["malformed"])

    def _finish(self):
        self._stop.set()
        with self._lock:
            sub, session = self._sub, self._session
            self._sub = self._session = None
        if sub is not None:
            try:
                sub.undeclare()
            except Exception:
                pass
        # A sample being published sees the stop within one slice and lets go.
        with self._publish_lock, self._lock:
            if not self._closed:
                self._closed = True
                self._save()
                self._report(force=True)
                self._producer.close()
        if session is not None:
            session.close()

    def counters(self):
        with self._lock:
            counts = {field: getattr(self, field) for field in _COUNTERS}
            counts["expected"] = self.expected
            return counts


def receive(key, to, **kwargs):
    """A Receiver from key into queue to (see Receiver); call .run() in a thread."""
    return Receiver(key, to, **kwargs)


# ---------------------------------------------------------------- command line

def _parser():
    p = argparse.ArgumentParser(
        prog="shmq bridge",
        description="Carry a queue to other hosts over Zenoh, with sequence and loss counts.",
        epilog="exit codes: 0 ok (also Ctrl-C), 1 failed (e.g. no queue after --wait), "
               "2 usage (bad endpoint, key expression or config). See docs/bridge.md.")
    sub = p.add_subparsers(dest="side", required=True)

    def zenoh_args(q):
        where = q.add_mutually_exclusive_group()
        where.add_argument("--connect", metavar="ENDPOINT", action="append",
                           help="Zenoh endpoint to connect to, e.g. tcp/10.0.0.2:7447 (repeatable)")
        where.add_argument("--listen", metavar="ENDPOINT", action="append",
                           help="Zenoh endpoint to listen on, e.g. tcp/0.0.0.0:7447 (repeatable)")
        q.add_argument("--zenoh-config", metavar="FILE",
                       help="Zenoh configuration file (JSON5), e.g. for TLS; read before --connect/--listen")
        q.add_argument("-q", "--quiet", action="store_true",
                       help="log only warnings and errors (no start and end lines)")

    out = sub.add_parser("out", help="forward local queue NAME to Zenoh key KEY")
    out.add_argument("name", metavar="NAME")
    out.add_argument("--key", required=True, help="Zenoh key expression to publish on")
    out.add_argument("--batch", type=int, default=DEFAULT_BATCH, metavar="N",
                     help=f"most messages per sample (default {DEFAULT_BATCH})")
    out.add_argument("--batch-bytes", type=int, default=DEFAULT_BATCH_BYTES, metavar="B",
                     help=f"close a sample once it holds B bytes (default {DEFAULT_BATCH_BYTES})")
    out.add_argument("--linger-us", type=int, default=DEFAULT_LINGER_US, metavar="U",
                     help=f"longest wait for more messages to fill a sample (default {DEFAULT_LINGER_US})")
    out.add_argument("--start", default="latest",
                     help="where to start reading when there is no earlier stream of this queue "
                          "and key to continue: latest (default), earliest, or a sequence")
    out.add_argument("--wait", type=float, default=10.0, metavar="S",
                     help="seconds to wait for the queue to exist (default 10; 0: don't wait; "
                          "-1: forever)")
    zenoh_args(out)

    inp = sub.add_parser("in", help="republish Zenoh key KEY into local queue --to NAME")
    inp.add_argument("key", metavar="KEY")
    inp.add_argument("--to", required=True, metavar="NAME", help="local queue to publish into")
    inp.add_argument("--slot-size", type=int, metavar="B",
                     help="slot size if the queue is made (default: shmq's, 1024); never the source's")
    inp.add_argument("--capacity", type=int, metavar="N",
                     help="slots if the queue is made (default: shmq's, 8192)")
    inp.add_argument("--lossless", action="store_true",
                     help="make the queue lossless: its registered consumers hold the bridge back")
    zenoh_args(inp)
    return p


def _log_to_stderr(args):
    """Unless logging is configured already, log `shmq bridge SIDE: ...` lines to stderr.

    Returns the handler added, or None.
    """
    if args.quiet:
        log.setLevel(logging.WARNING)
    if log.hasHandlers():
        return None
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"shmq bridge {args.side}: %(message)s"))
    log.addHandler(handler)
    if not args.quiet:
        log.setLevel(logging.INFO)
    return handler


def _endpoints(args):
    where = [f"connecting to {e}" for e in args.connect or ()] + [f"listening on {e}" for e in args.listen or ()]
    if args.zenoh_config:
        where.append(f"configured by {args.zenoh_config}")
    return ", ".join(where) or "with Zenoh's defaults"


class _Signals:
    """SIGINT and SIGTERM stop the bridge being served, or interrupt its set-up."""

    def __init__(self):
        self.bridge = None

    def __call__(self, signum, frame):
        if self.bridge is None:
            raise KeyboardInterrupt
        self.bridge.stop()


def _serve(bridge, signals):
    signals.bridge = bridge
    try:
        bridge.run()
    finally:
        bridge.close()


def _start(args, signals):
    if args.side == "out":
        if args.start in ("latest", "earliest"):
            start = args.start
        else:
            try:
                start = int(args.start)
            except ValueError:
                raise BridgeError(f"bad --start {args.start!r}: latest, earliest or a sequence") from None
        bridge = Forwarder(args.name, args.key, connect=args.connect, listen=args.listen,
                           batch=args.batch, batch_bytes=args.batch_bytes, linger_us=args.linger_us,
                           config=args.zenoh_config, start=start,
                           wait=None if args.wait < 0 else args.wait)
        log.info("forwarding queue %s to key %s, %s", args.name, args.key, _endpoints(args))
        try:
            _serve(bridge, signals)
        finally:
            c = bridge.counters()
            log.info("forwarded %d messages in %d samples, source_lost %d",
                     c["forwarded"], c["samples"], c["source_lost"])
        return EXIT_OK
    bridge = Receiver(args.key, args.to, connect=args.connect, listen=args.listen,
                      slot_size=args.slot_size, capacity=args.capacity,
                      lossless=True if args.lossless else None, config=args.zenoh_config)
    log.info("republishing key %s into queue %s (slot_size %d, capacity %d, %s), %s", args.key,
             args.to, bridge.slot_size, bridge.capacity,
             "lossless" if bridge.lossless else "lossy", _endpoints(args))
    try:
        _serve(bridge, signals)
    finally:
        c = bridge.counters()
        log.info("received %d messages in %d samples, source_lost %d, transit_lost %d",
                 c["received"], c["samples"], c["source_lost"], c["transit_lost"])
    return EXIT_OK


def main(argv=None) -> int:
    """`shmq bridge out|in ...`; returns the exit code. Errors are one line on stderr."""
    args = _parser().parse_args(argv)
    level = log.level
    handler = _log_to_stderr(args)
    signals = _Signals()
    old = {s: signal.signal(s, signals) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        return _start(args, signals)
    except KeyboardInterrupt:
        return EXIT_OK
    except BridgeError as e:
        log.error("%s", e)
        return EXIT_USAGE
    except shmq.QueueNotFound as e:
        log.error("%s", _first_line(e))
        return EXIT_FAILED
    except Exception as e:
        log.error("%s: %s", type(e).__name__, _first_line(e))
        return EXIT_FAILED
    finally:
        for s, handler_ in old.items():
            signal.signal(s, handler_)
        if handler is not None:
            log.removeHandler(handler)
        log.setLevel(level)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
