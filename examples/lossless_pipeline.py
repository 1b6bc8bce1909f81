"""A lossless pipeline: source -> square -> sink, three processes and two
queues, where nothing is dropped however slow a stage is.

Each queue is lossless: a stage that falls behind makes the stage before it
wait (backpressure) instead of losing messages. Closing a producer ends its
stream, so the end travels down the pipeline the way end of file travels
through a shell pipe: each stage's `for msg in consumer` loop ends, it closes
its own producer, and so on.

    python examples/lossless_pipeline.py [COUNT]
"""
import multiprocessing
import os
import struct
import sys
import time

import shmq

NUMBER = struct.Struct("<q")


def square(source, target, ready):
    with shmq.Consumer(source) as inbox, \
            shmq.Producer(target, slot_size=16, capacity=256, lossless=True, unlink_on_close=True) as outbox:
        ready.release()
        for msg in inbox:
            (n,) = NUMBER.unpack(msg)
            outbox.publish(NUMBER.pack(n * n))


def sink(source, ready, result):
    with shmq.Consumer(source) as inbox:
        ready.release()
        total = received = 0
        for msg in inbox:
            total += NUMBER.unpack(msg)[0]
            received += 1
            if received % 20_000 == 0:
                time.sleep(0.05)  # a slow stage: upstream waits, nothing is lost
        result.put((received, total, inbox.lost))


def main(count=100_000):
    numbers = f"example-pipeline-numbers-{os.getpid()}"
    squares = f"example-pipeline-squares-{os.getpid()}"
    ready, result = multiprocessing.Semaphore(0), multiprocessing.Queue()
    with shmq.Producer(numbers, slot_size=16, capacity=256, lossless=True, unlink_on_close=True) as source:
        stage = multiprocessing.Process(target=square, args=(numbers, squares, ready))
        stage.start()
        if not ready.acquire(timeout=30):  # the stage holds its consumer and made `squares`
            sys.exit("the square stage did not start")
        end = multiprocessing.Process(target=sink, args=(squares, ready, result))
        end.start()
        if not ready.acquire(timeout=30):
            sys.exit("the sink did not start")
        started = time.monotonic()
        for n in range(count):
            source.publish(NUMBER.pack(n))  # waits whenever the square stage is a ring behind
    received, total, lost = result.get(timeout=60)
    stage.join(30)
    end.join(30)
    expected = sum(n * n for n in range(count))
    print(f"sink: {received} of {count} squares, sum {total} ({'right' if total == expected else 'WRONG'}), "
          f"lost {lost}, {time.monotonic() - started:.2f} s")
    if (received, total, lost) != (count, expected, 0) or stage.exitcode or end.exitcode:
        sys.exit("the pipeline lost or changed something")


if __name__ == "__main__":
    main(*map(int, sys.argv[1:2]))
