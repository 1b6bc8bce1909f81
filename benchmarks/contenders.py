"""The benchmark contenders: shmq from Python, and what users would otherwise use.

Each contender knows how to set up channels in the parent process (before the
fork), run a producer loop and a consumer loop for the throughput shapes, and
an echo and a client loop for ping-pong. Messages carry their sequence number
in their first 8 bytes where a contender may drop them, so loss is counted,
not hidden. A contender whose package is missing is skipped with a note.
"""
import functools
import multiprocessing as mp
import os
import struct
import time

import shmq

_SEQ = struct.Struct("<Q")


def echo_loop(receive, send, iterations):
    """The ping-pong echo side: send back every message received."""
    for _ in range(iterations):
        send(receive())


def send_for(sends, msg, seconds, rounds=256):
    """Sends msg through every channel, `rounds` times between clock checks,
    until `seconds` have passed; returns the rounds sent."""
    end = time.perf_counter() + seconds
    sent = 0
    while True:
        for _ in range(rounds):
            for send in sends:
                send(msg)
        sent += rounds
        if time.perf_counter() >= end:
            return sent


def time_round_trips(send, receive, iterations, size=64):
    """The ping-pong client side: nanoseconds of each send-then-receive."""
    msg = bytes(size)
    clock = time.perf_counter_ns
    rtts = []
    append = rtts.append
    for _ in range(iterations):
        t0 = clock()
        send(msg)
        receive()
        append(clock() - t0)
    return rtts


def _unique(tag):
    return f"bench-{tag}-{os.getpid()}-{time.monotonic_ns() % 10**9}"


class Contender:
    name = "?"
    pingpong_modes = ()     # e.g. ("spin", "block")

    def available(self):
        return True, ""

    def version(self):
        return ""

    # Throughput: setup in the parent; producer/consumer in forked children.
    def setup(self, size, consumers):
        raise NotImplementedError

    def teardown(self, state):
        pass

    def produce(self, state, size, seconds, board):
        """Publishes for `seconds`; returns the number of messages sent."""
        raise NotImplementedError

    def consume(self, state, index, size, board):
        """Returns (received, lost) once the producer is done and drained."""
        raise NotImplementedError

    # Ping-pong over two channels.
    def pingpong_setup(self):
        return self.setup(64, 1), self.setup(64, 1)

    def pingpong_teardown(self, states):
        for s in states:
            self.teardown(s)


# ------------------------------------------------------------------- shmq

class ShmqPython(Contender):
    """shmq from Python, one publish() and one poll() per message."""
    name = "shmq-py"
    pingpong_modes = ("spin", "block")
    capacity = 1 << 16

    def version(self):
        return shmq.__version__

    def setup(self, size, consumers):
        name = _unique("shmq")
        shmq.Producer(name, slot_size=max(size, 8), capacity=self.capacity).close()
        return name

    def teardown(self, state):
        try:
            shmq.unlink(state)
        except shmq.QueueNotFound:
            pass

    def attach_consumer(self, state, index):
        return shmq.Consumer(state)

    def produce(self, state, size, seconds, board):
        msg = bytes(size)
        with shmq.Producer(state) as p:
            board.wait_start()
            publish = p.publish
            end = time.perf_counter() + seconds
            sent = 0
            while True:
                for _ in range(1024):
                    publish(msg)
                sent += 1024
                if time.perf_counter() >= end:
                    return sent

    def consume_loop(self, c, board):
        poll = c.poll
        got = 0
        while True:
            if poll() is not None:
                got += 1
            elif board.finished(c.position):
                return got

    def consume(self, c, index, size, board):
        got = self.consume_loop(c, board)
        return got, c.lost

    # ping-pong: the echo answers each message; the client times round trips
    def pingpong_echo(self, states, mode, iterations):
        ping, pong = states
        with shmq.Consumer(ping, spin=0) as c, shmq.Producer(pong) as p:
            yield
            wait = 0 if mode == "spin" else None
            poll, publish = c.poll, p.publish
            for _ in range(iterations):
                m = poll(wait)
                while m is None:
                    m = poll(wait)
                publish(m)

    def pingpong_client(self, states, mode, iterations):
        ping, pong = states
        with shmq.Producer(ping) as p, shmq.Consumer(pong) as c:
            yield
            wait = 0 if mode == "spin" else None
            poll, publish = c.poll, p.publish
            msg = bytes(64)
            clock = time.perf_counter_ns
            rtts = []
            append = rtts.append
            for _ in range(iterations):
                t0 = clock()
                publish(msg)
                m = poll(wait)
                while m is None:
                    m = poll(wait)
                append(clock() - t0)
            yield rtts


class ShmqPythonBatch(ShmqPython):
    """shmq from Python, publish_many()/poll_many() of 256 messages a call."""
    name = "shmq-py-batch"
    pingpong_modes = ()

    def produce(self, state, size, seconds, board):
        batch = [bytes(size)] * 256
        with shmq.Producer(state) as p:
            board.wait_start()
            publish_many = p.publish_many
            end = time.perf_counter() + seconds
            sent = 0
            while True:
                for _ in range(16):
                    publish_many(batch)
                sent += 16 * 256
                if time.perf_counter() >= end:
                    return sent

    def consume_loop(self, c, board):
        poll_many = c.poll_many
        got = 0
        while True:
            n = len(poll_many(256))
            if n:
                got += n
            elif board.finished(c.position):
                return got


class ShmqPythonBulk(ShmqPythonBatch):
    """shmq from Python, poll_many_into() a caller buffer (no per-message objects)."""
    name = "shmq-py-bulk"

    def consume_loop(self, c, board):
        buf = bytearray(1 << 20)
        poll_many_into = c.poll_many_into
        got = 0
        while True:
            n = len(poll_many_into(buf, 4096))
            if n:
                got += n
            elif board.finished(c.position):
                return got


class ShmqLossless(ShmqPython):
    """shmq from Python on a lossless queue: one publish() and one poll() per
    message, and publish() waits for the slowest registered consumer. Every
    message must arrive: a consumer that misses one fails the run."""
    name = "shmq-py-lossless"
    pingpong_modes = ("full",)

    def setup(self, size, consumers, capacity=None):
        name = _unique("shmql")
        shmq.Producer(name, slot_size=max(size, 8), capacity=capacity or self.capacity,
                      lossless=True, max_consumers=max(consumers, 2)).close()
        return name

    def attach_consumer(self, state, index):
        c = shmq.Consumer(state)
        if not c.registered:
            raise RuntimeError("lossless consumer did not register")
        return c

    def consume(self, c, index, size, board):
        got = self.consume_loop(c, board)
        if got != board.sent() or c.lost:
            raise RuntimeError(f"lossless: received {got} of {board.sent()}, lost {c.lost}")
        return got, c.lost

    # Ping-pong on two full rings of capacity 2, so that each hop is a
    # producer asleep in a blocked publish() woken by its consumer's read:
    #   client: poll(pong) [wakes the echo], publish(ping) [waits for the echo]
    #   echo:   publish(pong) [waits for the client], poll(ping) [wakes the client]
    # Both rings hold two unread messages between hops, so polls always find one.
    def pingpong_setup(self):
        return self.setup(64, 1, capacity=2), self.setup(64, 1, capacity=2)

    @staticmethod
    def _take(poll):
        m = poll()
        return m if m is not None else poll(None)

    def pingpong_echo(self, states, mode, iterations):
        ping, pong = states
        with shmq.Consumer(ping) as c, shmq.Producer(pong) as p:
            yield  # both consumers are registered once the barrier opens
            publish, poll, take = p.publish, c.poll, self._take
            m = bytes(64)
            publish(m)
            publish(m)
            for _ in range(iterations):
                publish(m)
                m = take(poll)

    def pingpong_client(self, states, mode, iterations):
        ping, pong = states
        with shmq.Producer(ping) as p, shmq.Consumer(pong) as c:
            yield
            publish, poll, take = p.publish, c.poll, self._take
            msg = bytes(64)
            publish(msg)
            publish(msg)
            clock = time.perf_counter_ns
            rtts = []
            append = rtts.append
            for _ in range(iterations):
                t0 = clock()
                take(poll)
                publish(msg)
                append(clock() - t0)
            yield rtts


# ---------------------------------------------------- multiprocessing peers

class MpQueue(Contender):
    name = "mp.Queue"
    pingpong_modes = ("block",)

    def version(self):
        return "stdlib"

    def setup(self, size, consumers):
        ctx = mp.get_context("fork")
        return [ctx.Queue() for _ in range(consumers)]

    def attach_consumer(self, state, index):
        return state[index]

    def produce(self, state, size, seconds, board):
        msg = bytes(size)
        board.wait_start()
        puts = [q.put for q in state]
        sent = send_for(puts, msg, seconds)
        for put in puts:
            put(None)
        for q in state:  # flush the feeder thread before this process exits
            q.close()
            q.join_thread()
        return sent

    def consume(self, q, index, size, board):
        get = q.get
        got = 0
        while get() is not None:
            got += 1
        return got, 0

    def pingpong_echo(self, states, mode, iterations):
        ping, pong = states[0][0], states[1][0]
        yield
        echo_loop(ping.get, pong.put, iterations)

    def pingpong_client(self, states, mode, iterations):
        ping, pong = states[0][0], states[1][0]
        yield
        yield time_round_trips(ping.put, pong.get, iterations)


class MpPipe(Contender):
    name = "mp.Pipe"
    pingpong_modes = ("block",)

    def version(self):
        return "stdlib"

    def setup(self, size, consumers):
        ctx = mp.get_context("fork")
        return [ctx.Pipe(duplex=False) for _ in range(consumers)]

    def attach_consumer(self, state, index):
        return state[index][0]

    def produce(self, state, size, seconds, board):
        msg = bytes(size)
        board.wait_start()
        sends = [w.send_bytes for _, w in state]
        sent = send_for(sends, msg, seconds)
        for send in sends:
            send(b"")
        return sent

    def consume(self, reader, index, size, board):
        recv = reader.recv_bytes
        got = 0
        while recv():
            got += 1
        return got, 0

    def pingpong_echo(self, states, mode, iterations):
        ping_r, pong_w = states[0][0][0], states[1][0][1]
        yield
        echo_loop(ping_r.recv_bytes, pong_w.send_bytes, iterations)

    def pingpong_client(self, states, mode, iterations):
        ping_w, pong_r = states[0][0][1], states[1][0][0]
        yield
        yield time_round_trips(ping_w.send_bytes, pong_r.recv_bytes, iterations)


# ------------------------------------------------------------ PyPI peers

class FasterFifo(Contender):
    name = "faster-fifo"
    pingpong_modes = ("block",)
    batched = False

    def available(self):
        try:
            import faster_fifo  # noqa: F401
        except ImportError:
            return False, "pip install faster-fifo"
        return True, ""

    def version(self):
        from importlib.metadata import version
        return version("faster-fifo")

    def setup(self, size, consumers):
        import faster_fifo
        return [faster_fifo.Queue(max_size_bytes=64 * 1024 * 1024) for _ in range(consumers)]

    def attach_consumer(self, state, index):
        return state[index]

    def produce(self, state, size, seconds, board):
        msg = bytes(size)
        board.wait_start()
        if self.batched:
            puts = [functools.partial(q.put_many, timeout=10) for q in state]
            sent = 256 * send_for(puts, [msg] * 256, seconds, rounds=1)
        else:
            sent = send_for([functools.partial(q.put, timeout=10) for q in state], msg, seconds)
        for q in state:
            q.put(None, timeout=10)
        return sent

    def consume(self, q, index, size, board):
        got = 0
        if self.batched:
            while True:
                for m in q.get_many(timeout=10, max_messages_to_get=4096):
                    if m is None:
                        return got, 0
                    got += 1
        get = q.get
        while get(timeout=10) is not None:
            got += 1
        return got, 0

    def pingpong_echo(self, states, mode, iterations):
        ping, pong = states[0][0], states[1][0]
        yield
        echo_loop(lambda: ping.get(timeout=10), pong.put, iterations)

    def pingpong_client(self, states, mode, iterations):
        ping, pong = states[0][0], states[1][0]
        yield
        yield time_round_trips(ping.put, lambda: pong.get(timeout=10), iterations)


class FasterFifoMany(FasterFifo):
    name = "faster-fifo-get_many"
    batched = True
    pingpong_modes = ()


class Zmq(Contender):
    """pyzmq over ipc://: PUSH/PULL (one pair per consumer) and PAIR for ping-pong."""
    name = "pyzmq-ipc"
    pingpong_modes = ("block",)

    def available(self):
        try:
            import zmq  # noqa: F401
        except ImportError:
            return False, "pip install pyzmq"
        return True, ""

    def version(self):
        import zmq
        return zmq.__version__ + " (libzmq " + zmq.zmq_version() + ")"

    def setup(self, size, consumers):
        return [f"ipc:///tmp/{_unique('zmq')}-{i}" for i in range(consumers)]

    def teardown(self, state):
        for address in state:
            try:
                os.unlink(address[len("ipc://"):])
            except FileNotFoundError:
                pass

    def attach_consumer(self, state, index):
        import zmq
        sock = zmq.Context.instance().socket(zmq.PULL)
        sock.bind(state[index])
        return sock

    def produce(self, state, size, seconds, board):
        import zmq
        socks = []
        for address in state:
            s = zmq.Context.instance().socket(zmq.PUSH)
            s.connect(address)
            socks.append(s)
        msg = bytes(size)
        board.wait_start()
        # Zero-copy for large messages, where pyzmq advises it.
        sends = [functools.partial(s.send, copy=size <= 512) for s in socks]
        sent = send_for(sends, msg, seconds)
        for send in sends:
            send(b"")
        for s in socks:
            s.close(linger=10000)
        # The child leaves through os._exit: terminate the context now, which
        # waits until the queued frames (the end marker included) are sent.
        zmq.Context.instance().term()
        return sent

    def consume(self, sock, index, size, board):
        recv = sock.recv
        got = 0
        while recv():
            got += 1
        sock.close()
        return got, 0

    def pingpong_setup(self):
        return [f"ipc:///tmp/{_unique('zmqpp')}"], None

    def pingpong_teardown(self, states):
        self.teardown(states[0])

    def pingpong_echo(self, states, mode, iterations):
        import zmq
        s = zmq.Context.instance().socket(zmq.PAIR)
        s.bind(states[0][0])
        yield
        echo_loop(s.recv, s.send, iterations)
        s.close()

    def pingpong_client(self, states, mode, iterations):
        import zmq
        s = zmq.Context.instance().socket(zmq.PAIR)
        s.connect(states[0][0])
        yield
        rtts = time_round_trips(s.send, s.recv, iterations)
        s.close()
        yield rtts


class PosixIpc(Contender):
    """POSIX message queues through posix_ipc (one queue per consumer)."""
    name = "posix_ipc-mq"
    pingpong_modes = ("block",)

    def available(self):
        try:
            import posix_ipc  # noqa: F401
        except ImportError:
            return False, "pip install posix-ipc"
        return True, ""

    def version(self):
        import posix_ipc
        return posix_ipc.VERSION

    def setup(self, size, consumers):
        import posix_ipc
        names = []
        for _ in range(consumers):
            name = "/" + _unique("mq")
            posix_ipc.MessageQueue(name, posix_ipc.O_CREX, max_messages=10,
                                   max_message_size=max(size, 64)).close()
            names.append(name)
        return names

    def teardown(self, state):
        import posix_ipc
        for name in state:
            try:
                posix_ipc.unlink_message_queue(name)
            except posix_ipc.ExistentialError:
                pass

    def attach_consumer(self, state, index):
        import posix_ipc
        return posix_ipc.MessageQueue(state[index])

    def produce(self, state, size, seconds, board):
        import posix_ipc
        queues = [posix_ipc.MessageQueue(n) for n in state]
        msg = bytes(size)
        board.wait_start()
        sends = [q.send for q in queues]
        sent = send_for(sends, msg, seconds)
        for send in sends:
            send(b"!")
        return sent

    def consume(self, q, index, size, board):
        receive = q.receive
        got = 0
        while len(receive()[0]) > 1:
            got += 1
        return got, 0

    def pingpong_echo(self, states, mode, iterations):
        import posix_ipc
        ping, pong = posix_ipc.MessageQueue(states[0][0]), posix_ipc.MessageQueue(states[1][0])
        yield
        echo_loop(lambda: ping.receive()[0], pong.send, iterations)

    def pingpong_client(self, states, mode, iterations):
        import posix_ipc
        ping, pong = posix_ipc.MessageQueue(states[0][0]), posix_ipc.MessageQueue(states[1][0])
        yield
        yield time_round_trips(ping.send, pong.receive, iterations)


class Iceoryx2(Contender):
    """iceoryx2 publish-subscribe (a ctypes byte array per message; lossy when a
    subscriber's buffer overflows, so messages carry a sequence number)."""
    name = "iceoryx2"
    pingpong_modes = ("spin",)

    def available(self):
        try:
            import iceoryx2  # noqa: F401
        except ImportError:
            return False, "pip install iceoryx2"
        return True, ""

    def version(self):
        from importlib.metadata import version
        return version("iceoryx2")

    def setup(self, size, consumers):
        return (_unique("iox").replace("-", "_"), max(size, 8), consumers)

    @staticmethod
    def _service(state):
        import ctypes

        import iceoryx2 as iox2
        name, size, consumers = state
        iox2.set_log_level(iox2.LogLevel.Error)
        node = iox2.NodeBuilder.new().create(iox2.ServiceType.Ipc)
        payload = ctypes.c_uint8 * size
        service = (node.service_builder(iox2.ServiceName.new(name))
                   .publish_subscribe(payload)
                   .max_subscribers(max(consumers, 2))
                   .subscriber_max_buffer_size(4096)
                   .open_or_create())
        return node, service, payload

    def attach_consumer(self, state, index):
        node, service, payload = self._service(state)
        sub = service.subscriber_builder().buffer_size(4096).create()
        return node, service, sub

    def produce(self, state, size, seconds, board):
        node, service, payload = self._service(state)
        pub = service.publisher_builder().create()
        board.wait_start()
        buf = bytearray(max(size, 8))
        end = time.perf_counter() + seconds
        sent = 0
        pack_into = _SEQ.pack_into
        while True:
            for _ in range(256):
                pack_into(buf, 0, sent)
                pub.loan_uninit().write_payload(payload.from_buffer_copy(buf)).send()
                sent += 1
            if time.perf_counter() >= end:
                break
        board.set_sent(sent)
        time.sleep(0.05)
        return sent

    def consume(self, handles, index, size, board):
        node, service, sub = handles
        receive = sub.receive
        got = 0
        last = -1
        while True:
            sample = receive()
            if sample is not None:
                data = bytes(sample.payload().contents)
                last = _SEQ.unpack_from(data)[0]
                got += 1
                continue
            if board.done() and last + 1 >= board.sent():
                break
            if board.done() and board.idle_for(0.2):
                break
        return got, max(board.sent() - got, 0)

    def pingpong_setup(self):
        return self.setup(64, 1), self.setup(64, 1)

    def pingpong_teardown(self, states):
        pass

    def _ends(self, states, echo):
        node_a, service_ping, _ = self._service(states[0])
        node_b, service_pong, _ = self._service(states[1])
        if echo:
            return (node_a, node_b, service_ping.subscriber_builder().create(),
                    service_pong.publisher_builder().create())
        return (node_a, node_b, service_pong.subscriber_builder().create(),
                service_ping.publisher_builder().create())

    @staticmethod
    def _io(sub, pub):
        import ctypes
        payload = ctypes.c_uint8 * 64

        def receive():
            s = sub.receive()
            while s is None:
                s = sub.receive()
            return bytes(s.payload().contents)

        def send(msg):
            pub.loan_uninit().write_payload(payload.from_buffer_copy(msg)).send()

        return receive, send

    def pingpong_echo(self, states, mode, iterations):
        _, _, sub, pub = self._ends(states, echo=True)
        receive, send = self._io(sub, pub)
        yield
        echo_loop(receive, send, iterations)

    def pingpong_client(self, states, mode, iterations):
        _, _, sub, pub = self._ends(states, echo=False)
        receive, send = self._io(sub, pub)
        yield
        yield time_round_trips(send, receive, iterations)


PYTHON_CONTENDERS = [ShmqPython(), ShmqPythonBatch(), ShmqPythonBulk(), MpQueue(), MpPipe(),
                     FasterFifo(), FasterFifoMany(), Zmq(), Iceoryx2(), PosixIpc()]
# Run only in the "lossless" shape, beside the lossless peers and lossy shmq.
LOSSLESS_CONTENDERS = [ShmqLossless()]
