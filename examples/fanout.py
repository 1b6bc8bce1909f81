"""Fan-out: one producer, several worker processes, and every worker sees
every message (a broadcast, not a work queue).

The queue is lossless, so the producer waits for the slowest worker rather
than overrun it; each worker checks that it got every message, in order.

    python examples/fanout.py [WORKERS] [MESSAGES]
"""
import multiprocessing
import os
import sys
import zlib

import shmq


def worker(name, ready, index):
    with shmq.Consumer(name) as c:  # registers: the producer now waits for this worker
        ready.release()
        expected, checksum = 0, 0
        for msg in c:  # ends when the producer closes the stream and all is read
            seq = int.from_bytes(msg[:8], "little")
            assert seq == expected, f"worker {index}: got {seq}, expected {expected}"
            checksum = zlib.crc32(msg, checksum)
            expected += 1
        print(f"worker {index} (pid {os.getpid()}): {expected} messages, crc {checksum:08x}, lost {c.lost}")


def main(workers=4, messages=200_000):
    name = f"example-fanout-{os.getpid()}"
    with shmq.Producer(name, slot_size=64, capacity=4096, lossless=True, unlink_on_close=True) as p:
        ready = multiprocessing.Semaphore(0)
        procs = [multiprocessing.Process(target=worker, args=(name, ready, i)) for i in range(workers)]
        for proc in procs:
            proc.start()
        for _ in procs:  # every worker registered before the first message
            if not ready.acquire(timeout=30):
                sys.exit("a worker did not start")
        checksum = 0
        for seq in range(messages):
            msg = seq.to_bytes(8, "little") + b"payload " * 4
            checksum = zlib.crc32(msg, checksum)
            p.publish(msg)
        print(f"producer: {messages} messages, crc {checksum:08x}")
    # Leaving the block closed the producer: the workers' loops end.
    for proc in procs:
        proc.join(60)
    if any(proc.exitcode != 0 for proc in procs):
        sys.exit("a worker failed")


if __name__ == "__main__":
    main(*map(int, sys.argv[1:3]))
