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
         8     8   stream: random id of one out-side attachment to the queue
        16     8   first: source sequence number of the first message
        24     8   lost: messages the out side's consumer has lost to overrun
                   since this stream began, up to the first message
        32     4   slot_size of the source queue
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

The in side knows, per stream, the next source sequence it expects. A sample
whose first sequence lies ahead of it opens a gap of (first - expected)
messages; the growth of `lost` since the last sample says how many of those
the out side lost at the source (`source_lost`); the rest were lost on the
way, to a restart of either half or of Zenoh, or to a sample Zenoh dropped
(`transit_lost`). A new stream id (the out side restarted or re-attached)
resets the expectation: a new stream whose first sequence is ahead of the old
one's counts the gap (the out side restarting at "latest" missed it); one
that starts behind it is the queue itself made anew, counted in `resets`.

The in side's counters live in /dev/shm/shmq-NAME.bridge, a small JSON file
rewritten atomically (read it with `status(NAME)`). It also anchors a
restart: it is rewritten at every gap and every half second, and records the
far queue's next sequence next to the source sequence expected, so a
restarted `bridge in` knows exactly which source sequence comes next (the
far queue's sequence continues across producer restarts, and between two
records no gap was seen, so the two advance together).

Loss accounting, end to end: a far consumer's `lost` counts only overruns of
the far ring. Messages lost between the source and a far consumer are
far `lost` + the bridge's `source_lost` + `transit_lost` (+ `too_large`, the
messages larger than the far queue's slot, dropped), counted from the first
sample the in side received.

Zenoh carries the data in the clear unless a --zenoh-config file configures
TLS or mTLS (see docs/bridge.md).

This module imports zenoh only when a bridge is made, so `status()` works
without it.
"""
import argparse
import array
import json
import os
import random
import signal
import socket
import struct
import sys
import threading
import time

import shmq

__all__ = ["Forwarder", "Receiver", "forward", "receive", "status", "remove_status",
           "BridgeError", "main"]

MAGIC = 0x5153
VERSION = 1
HEADER = struct.Struct("<HBBIQQQII")
STATUS_SUFFIX = ".bridge"
SHM_DIR = "/dev/shm"

DEFAULT_BATCH = 256
DEFAULT_BATCH_BYTES = 64 * 1024
DEFAULT_LINGER_US = 0
# A poll that waits for the first message of a sample returns at least this
# often, so close() and the end of a queue are noticed.
_IDLE_SLICE = 0.1
_STATUS_PERIOD = 0.5
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


# ---------------------------------------------------------------- status file

def _status_path(name):
    return os.path.join(SHM_DIR, shmq.NAME_PREFIX + name + STATUS_SUFFIX)


def status(name):
    """The counters `bridge in` keeps for queue name, as a dict, or None if it has none."""
    try:
        with open(_status_path(name), "rb") as f:
            data = json.loads(f.read(65536))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("version") == 1 else None


def remove_status(name):
    """Remove the status file of queue name, if any."""
    try:
        os.unlink(_status_path(name))
    except FileNotFoundError:
        pass


def _write_status(name, record):
    path = _status_path(name)
    # The temporary name does not start with shmq-, so no tool takes it for a queue.
    tmp = os.path.join(SHM_DIR, f".{shmq.NAME_PREFIX}{name}{STATUS_SUFFIX}.{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump(record, f)
    os.replace(tmp, path)


class _Side:
    """What both sides share: run() in a thread until stop() or close()."""

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
    (None: forever), and forwards until close(). Thread-safe: close() and
    stop() may be called from any thread or a signal handler.
    """

    def __init__(self, name, key, *, connect=None, listen=None, batch=DEFAULT_BATCH,
                 batch_bytes=DEFAULT_BATCH_BYTES, linger_us=DEFAULT_LINGER_US, config=None,
                 start="latest", wait=None):
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
        self._lost_before = 0   # source_lost of earlier attachments
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._consumer = None
        self._running = False
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

    def _attach(self, start):
        deadline = None if self.wait is None else time.monotonic() + self.wait
        while True:
            try:
                return shmq.Consumer(self.name, start=start, register=True)
            except shmq.QueueNotFound:
                if self._stop.is_set():
                    return None
                if deadline is not None and time.monotonic() >= deadline:
                    raise shmq.QueueNotFound(f"no queue {self.name!r} (waited {self.wait:g} s)") from None
                time.sleep(0.05)

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
        start = self.start
        while not self._stop.is_set():
            consumer = self._attach(start)
            if consumer is None:
                return
            self._consumer = consumer
            self.attachments += 1
            # A queue made anew after an unlink starts from its beginning.
            start = "earliest"
            try:
                self._stream(consumer)
            finally:
                self._lost_before += consumer.lost
                self._consumer = None
                consumer.close()

    def _stream(self, consumer):
        stream = random.getrandbits(64)
        slot, capacity = consumer.slot_size, consumer.capacity
        budget = max(self.batch_bytes, 1)
        buf = bytearray(budget + slot)   # room for one more whole message past the budget
        view = memoryview(buf)
        lengths = []
        used = first = batch_lost = 0
        pub, batch_max, linger = self._pub, self.batch, self.linger
        monotonic = time.monotonic

        def send():
            nonlocal lengths, used
            table = array.array("I", lengths)
            if sys.byteorder == "big":
                table.byteswap()
            head = HEADER.pack(MAGIC, VERSION, 0, len(lengths), stream, first, batch_lost, slot, capacity)
            pub.put(b"".join((head, table, view[:used])))
            self.forwarded += len(lengths)
            self.samples += 1
            lengths, used = [], 0

        while not self._stop.is_set():
            lost = consumer.lost
            got = consumer.poll_many_into(view, batch_max, _IDLE_SLICE)
            if not got:
                if consumer.unlinked:
                    return
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
                "source_lost": self.source_lost, "attachments": self.attachments}



def forward(name, key, **kwargs):
    """A Forwarder for queue name to key (see Forwarder); call .run() in a thread."""
    return Forwarder(name, key, **kwargs)


# ---------------------------------------------------------------- in

class Receiver(_Side):
    """Republish what arrives on Zenoh key expression `key` into local queue `to`.

    The queue is created with slot_size and capacity when given (or continued
    if it exists); otherwise it is created with the source's geometry when the
    first sample arrives. Samples are handled on Zenoh's thread as they
    arrive; run() only keeps the status file fresh until close().
    Counters: received (messages republished), source_lost, transit_lost,
    too_large, resets, malformed (samples not in this format).
    """

    def __init__(self, key, to, *, connect=None, listen=None, slot_size=None, capacity=None,
                 config=None, status_file=True):
        check_key(key)
        self.key, self.to = key, to
        self._slot_size, self._capacity = slot_size, capacity
        self._status_file = status_file
        self.received = self.samples = 0
        self.source_lost = self.transit_lost = self.too_large = self.resets = self.malformed = 0
        self._stream = None     # the stream id being followed
        self._expected = None   # next source sequence expected on it
        self._lost_seen = 0     # its lost counter at the last sample
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._closed = False
        self._running = False
        self._producer = None
        self._last_far_next = None
        self._error = None
        if slot_size is not None or shmq.exists(to):
            self._producer = shmq.Producer(to, slot_size, capacity)
        self._restore()
        self._session = open_session(connect, listen, config)
        try:
            self._sub = self._session.declare_subscriber(key, self._on_sample)
        except Exception as e:
            self._session.close()
            self._close_producer()
            raise BridgeError(f"zenoh: {_first_line(e)}") from None

    def _restore(self):
        """Continue the counters and the expected sequence of an earlier run."""
        old = status(self.to) if self._status_file else None
        if not old or old.get("key") != self.key:
            return
        for field in ("received", "samples", "source_lost", "transit_lost", "too_large",
                      "resets", "malformed"):
            setattr(self, field, int(old.get(field, 0)))
        if self._producer is not None and old.get("stream") is not None:
            self._stream = int(old["stream"])
            self._lost_seen = int(old["lost_seen"])
            # No gap was counted since the record: source and far sequence advanced together.
            self._expected = int(old["expected"]) + (self._producer.next_sequence - int(old["far_next"]))

    def _record(self):
        return {"version": 1, "key": self.key, "queue": self.to, "pid": os.getpid(),
                "updated": time.time(), "received": self.received, "samples": self.samples,
                "source_lost": self.source_lost, "transit_lost": self.transit_lost,
                "too_large": self.too_large, "resets": self.resets, "malformed": self.malformed,
                "stream": self._stream, "expected": self._expected, "lost_seen": self._lost_seen,
                "far_next": self._far_next()}

    def _far_next(self):
        p = self._producer
        if p is None:
            return None
        if not p.closed:
            self._last_far_next = p.next_sequence
        return self._last_far_next

    def _save(self):
        # Caller holds self._lock.
        if self._status_file and self._producer is not None:
            try:
                _write_status(self.to, self._record())
            except OSError:
                pass  # counters stay on the object; the file is a convenience

    def _on_sample(self, sample):
        try:
            data = sample.payload.to_bytes()
            with self._lock:
                if not self._closed:
                    self._take(data)
        except Exception as e:  # never let one sample kill Zenoh's thread
            self._error = e

    def _take(self, data):
        if len(data) < HEADER.size:
            self.malformed += 1
            return
        magic, version, _flags, count, stream, first, lost, slot, capacity = HEADER.unpack_from(data)
        body = HEADER.size + 4 * count
        if magic != MAGIC or version != VERSION or len(data) < body:
            self.malformed += 1
            return
        table = array.array("I")
        table.frombytes(data[HEADER.size:body])
        if sys.byteorder == "big":
            table.byteswap()
        if body + sum(table) != len(data):
            self.malformed += 1
            return
        if self._producer is None:
            self._producer = shmq.Producer(self.to, self._slot_size or slot,
                                           self._capacity or capacity)
        gap = False
        if stream != self._stream:
            if self._expected is not None and first < self._expected:
                self.resets += 1          # the source queue was made anew
            elif self._expected is not None:
                lost_src = min(lost, first - self._expected)
                self.source_lost += lost_src
                self.transit_lost += first - self._expected - lost_src
                gap = first != self._expected
            self._stream, self._expected, self._lost_seen = stream, first, lost
        skip = 0
        if first > self._expected:
            missing = first - self._expected
            lost_src = min(max(lost - self._lost_seen, 0), missing)
            self.source_lost += lost_src
            self.transit_lost += missing - lost_src
            gap = True
        elif first < self._expected:
            skip = min(self._expected - first, count)   # seen already
        self._lost_seen = max(lost, self._lost_seen)
        self._expected = max(self._expected, first + count)
        self.samples += 1
        view = memoryview(data)
        messages = []
        far_slot = self._producer.slot_size
        offset = body
        for i, length in enumerate(table):
            if i >= skip:
                if length <= far_slot:
                    messages.append(view[offset:offset + length])
                else:
                    self.too_large += 1
                    gap = True
            offset += length
        if messages:
            self._producer.publish_many(messages)
            self.received += len(messages)
        if gap:
            self._save()

    @property
    def expected(self):
        """The next source sequence expected, or None before the first sample."""
        return self._expected

    def run(self):
        """Keep the status file fresh until close() or stop(); then close."""
        self._running = True
        try:
            while not self._stop.wait(_STATUS_PERIOD):
                with self._lock:
                    self._save()
        finally:
            self._running = False
            self._finish()

    def _close_producer(self):
        if self._producer is not None:
            self._producer.close()

    def _finish(self):
        sub, session = getattr(self, "_sub", None), getattr(self, "_session", None)
        self._sub = self._session = None
        if sub is not None:
            try:
                sub.undeclare()
            except Exception:
                pass
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._save()
            self._close_producer()
        if session is not None:
            session.close()

    def counters(self):
        with self._lock:
            return {k: v for k, v in self._record().items()
                    if k in ("received", "samples", "source_lost", "transit_lost", "too_large",
                             "resets", "malformed", "expected")}



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
        q.add_argument("-q", "--quiet", action="store_true", help="no start and end lines on stderr")

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
                     help="where to start reading: latest (default), earliest, or a sequence")
    out.add_argument("--wait", type=float, default=10.0, metavar="S",
                     help="seconds to wait for the queue to exist (default 10; 0: don't wait; "
                          "-1: forever)")
    zenoh_args(out)

    inp = sub.add_parser("in", help="republish Zenoh key KEY into local queue --to NAME")
    inp.add_argument("key", metavar="KEY")
    inp.add_argument("--to", required=True, metavar="NAME", help="local queue to publish into")
    inp.add_argument("--slot-size", type=int, metavar="B", help="slot size if the queue is made "
                     "(default: the source's, at the first sample)")
    inp.add_argument("--capacity", type=int, metavar="N", help="slots if the queue is made (default: the source's)")
    zenoh_args(inp)
    return p


def _say(args, text):
    if not args.quiet:
        print(f"shmq bridge {args.side}: {text}", file=sys.stderr, flush=True)


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
        _say(args, f"{args.name} -> {args.key}")
        try:
            _serve(bridge, signals)
        finally:
            c = bridge.counters()
            _say(args, f"forwarded {c['forwarded']} messages in {c['samples']} samples, "
                       f"source_lost {c['source_lost']}")
        return EXIT_OK
    bridge = Receiver(args.key, args.to, connect=args.connect, listen=args.listen,
                      slot_size=args.slot_size, capacity=args.capacity, config=args.zenoh_config)
    _say(args, f"{args.key} -> {args.to}")
    try:
        _serve(bridge, signals)
    finally:
        c = bridge.counters()
        _say(args, f"received {c['received']} messages in {c['samples']} samples, "
                   f"source_lost {c['source_lost']}, transit_lost {c['transit_lost']}")
    return EXIT_OK


def main(argv=None) -> int:
    """`shmq bridge out|in ...`; returns the exit code. Errors are one line on stderr."""
    args = _parser().parse_args(argv)
    signals = _Signals()
    old = {s: signal.signal(s, signals) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        return _start(args, signals)
    except KeyboardInterrupt:
        return EXIT_OK
    except BridgeError as e:
        print(f"shmq bridge {args.side}: {e}", file=sys.stderr)
        return EXIT_USAGE
    except shmq.QueueNotFound as e:
        print(f"shmq bridge {args.side}: {_first_line(e)}", file=sys.stderr)
        return EXIT_FAILED
    except Exception as e:
        print(f"shmq bridge {args.side}: {type(e).__name__}: {_first_line(e)}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
