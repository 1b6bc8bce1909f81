"""trio: three queues read in one trio program, with no thread and no busy
loop, through each consumer's descriptor. A producer process publishes on
the three queues in bursts with quiet gaps, then closes them.

`Consumer.fileno()` is readable whenever `poll(timeout=0)` would return a
message or the stream has ended, and stops being readable only when a poll
returns None: so each task polls until None, then waits for the descriptor
with `trio.lowlevel.wait_readable`. anyio (`anyio.wait_readable` on anyio 4.7
and later), gevent (`gevent.select.select`) and any `selectors` loop work the
same way.

    pip install trio
    python examples/trio_consumer.py [MESSAGES_PER_QUEUE]
"""
import multiprocessing
import os
import struct
import sys
import time

import trio

import shmq

MESSAGE = struct.Struct("<qq")  # queue index, sequence within the queue


def publisher(names, per_queue):
    """In its own process: lossless queues, so nothing is lost while a task sleeps."""
    producers = [shmq.Producer(name, slot_size=MESSAGE.size, capacity=256, lossless=True,
                               unlink_on_close=True) for name in names]
    try:
        for p in producers:
            p.wait_consumers(1, timeout=30)
        for i in range(per_queue):
            for q, p in enumerate(producers):
                p.publish(MESSAGE.pack(q, i))
            if i % 250 == 249:
                time.sleep(0.05)  # quiet: the tasks sleep in trio, on their descriptors
    finally:
        for p in producers:
            p.close()  # ends each stream: the descriptor turns readable, poll returns None


async def read_queue(consumer, totals, index):
    expected = 0
    while True:
        msg = consumer.poll()
        if msg is not None:
            q, seq = MESSAGE.unpack(msg)
            assert (q, seq) == (index, expected), (q, seq, index, expected)
            expected += 1
            continue
        if consumer.ended:
            break
        await trio.lowlevel.wait_readable(consumer.fileno())
    totals[index] = expected


async def main(names, per_queue):
    consumers = [shmq.Consumer(name, start="earliest", wait=10) for name in names]
    totals = [0] * len(names)
    try:
        async with trio.open_nursery() as nursery:
            for index, consumer in enumerate(consumers):
                nursery.start_soon(read_queue, consumer, totals, index)
    finally:
        for consumer in consumers:
            consumer.close()
    return totals


if __name__ == "__main__":
    per_queue = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    names = [f"example-trio-{q}-{os.getpid()}" for q in range(3)]
    proc = multiprocessing.get_context("spawn").Process(target=publisher, args=(names, per_queue))
    proc.start()
    totals = trio.run(main, names, per_queue)
    proc.join(30)
    print(f"trio: {sum(totals)} messages from {len(names)} queues, in order, "
          f"{'complete' if totals == [per_queue] * len(names) else 'INCOMPLETE'}")
    sys.exit(0 if totals == [per_queue] * len(names) and proc.exitcode == 0 else 1)
