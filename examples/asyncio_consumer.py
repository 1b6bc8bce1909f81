"""asyncio: two consumers in one event loop, beside other work, with no busy
loop. A producer process publishes price ticks for a while, then closes.

`async for msg in consumer` ends when the producer closes the stream;
`await consumer.poll_async(timeout)` returns None when nothing came in time,
which is where a heartbeat goes. While a consumer waits, the loop watches its
descriptor (`consumer.fileno()`), which the producer makes readable with one
datagram when it publishes: no thread, no CPU while idle, and the loop stays
free for the other tasks.

    python examples/asyncio_consumer.py [TICKS]
"""
import asyncio
import multiprocessing
import os
import struct
import sys
import time

import shmq

TICK = struct.Struct("<qd")  # sequence, price


def exchange(name, ready, ticks):
    """The producer, in its own process: bursts of ticks with quiet gaps."""
    with shmq.Producer(name, slot_size=TICK.size, capacity=1024, lossless=True, unlink_on_close=True) as p:
        ready.set()
        try:
            p.wait_consumers(2, timeout=30)  # both registered: none can miss a tick
        except TimeoutError:
            sys.exit("the consumers did not come")
        for i in range(ticks):
            p.publish(TICK.pack(i, 100 + (i % 7) * 0.25))
            if i % 100 == 99:
                time.sleep(0.1)  # a quiet spell: the consumers sleep, the loop keeps running


async def average(name):
    total = count = 0
    with shmq.Consumer(name, start="earliest") as c:
        async for msg in c:
            total += TICK.unpack(msg)[1]
            count += 1
    return count, total / max(count, 1)


async def watchdog(name):
    """Says when the feed went quiet for 50 ms, and counts the ticks."""
    quiet = seen = 0
    with shmq.Consumer(name, start="earliest") as c:
        while True:
            ended = c.ended  # looked at first: if it had ended, no tick can follow
            msg = await c.poll_async(timeout=0.05)
            if msg is not None:
                seen += 1
            elif ended:
                return seen, quiet
            else:
                quiet += 1


async def ticker(stop):
    beats = 0
    while not stop.is_set():  # other work in the same loop keeps running
        await asyncio.sleep(0.01)
        beats += 1
    return beats


async def consume(name, ticks):
    stop = asyncio.Event()
    beats = asyncio.create_task(ticker(stop))
    (count, mean), (seen, quiet) = await asyncio.wait_for(
        asyncio.gather(average(name), watchdog(name)), timeout=60)
    stop.set()
    print(f"average: {count} ticks, mean price {mean:.4f}; watchdog: {seen} ticks, "
          f"{quiet} quiet spells; the loop ticked {await beats} times meanwhile")
    if count != ticks or seen != ticks:
        sys.exit("a consumer missed ticks")


def main(ticks=1000):
    name = f"example-asyncio-{os.getpid()}"
    ready = multiprocessing.Event()
    feed = multiprocessing.Process(target=exchange, args=(name, ready, ticks))
    feed.start()
    if not ready.wait(30):
        sys.exit("the producer did not start")
    asyncio.run(consume(name, ticks))
    feed.join(30)
    if feed.exitcode != 0:
        sys.exit("the producer failed")


if __name__ == "__main__":
    main(*map(int, sys.argv[1:2]))
