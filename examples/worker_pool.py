r"""A worker pool: one dispatcher, N workers that share the tasks, and one
collector that gathers the results of all of them.

    dispatcher --tasks--> worker 0 --results-0--\
                     \--> worker 1 --results-1---> collector
                      \-> ...      --results-N--/

The workers are consumers of the tasks queue in one consumer *group*: the
group splits the stream, so each task goes to exactly one worker (whichever
claims it first), where plain consumers would each see every task. Every
queue is lossless, so a slow stage holds the one before it back instead of
losing work; the group counts as one reader for the dispatcher.

Each worker is the producer of its own results queue, and the collector
waits on all of them at once with `shmq.wait_any`. Closing a producer ends
its stream: the dispatcher closes the tasks queue when it has sent
everything, each worker stops once the group has claimed every task, closes
its results queue, and the collector stops when every results queue has
ended and is read. No sentinel messages: a sentinel would reach only one
member of the group.

    python examples/worker_pool.py [WORKERS] [TASKS]
"""
import multiprocessing
import os
import queue
import signal
import struct
import sys
import time

import shmq

TASK = struct.Struct("<q")      # a number to square
RESULT = struct.Struct("<qq")   # the number and its square


def worker(tasks, results, ready):
    with shmq.Consumer(tasks, group="squarers") as inbox, \
            shmq.Producer(results, slot_size=RESULT.size, capacity=1024, lossless=True,
                          unlink_on_close=True) as outbox:
        ready.release()
        while True:
            batch = inbox.poll_many(256)  # claims up to 256 tasks for this worker alone
            if batch:
                outbox.publish_many([RESULT.pack(n, n * n) for (n,) in map(TASK.unpack, batch)])
                continue
            ended = inbox.ended
            if not inbox.wait(1):  # False at once if it had ended and the group has claimed every task
                if ended:
                    break
                if inbox.ended:  # it ended during the wait: look once more
                    continue
                if not inbox.producer_alive:  # a dispatcher that dies ends nothing
                    sys.exit("worker: the dispatcher died")
    # Leaving the block closed `outbox`: the collector sees this worker's stream end.


def collector(names, count, ready, report):
    inboxes = [shmq.Consumer(name, wait=30) for name in names]  # wait=30: until the worker made it
    ready.release()
    which = {id(c): i for i, c in enumerate(inboxes)}
    done = [0] * len(inboxes)
    seen = bytearray(count)
    duplicates = wrong = 0
    live = list(inboxes)
    look = time.monotonic()
    while live:
        ready_now = shmq.wait_any(live, timeout=1)
        if time.monotonic() >= look:  # once a second: a worker that dies ends nothing
            if any(not c.producer_alive and not c.ended for c in live):
                sys.exit("collector: a worker died without closing its results")
            look = time.monotonic() + 1
        for c in ready_now:
            ended = c.ended  # read before the poll: ended, then nothing left, means done
            results = c.poll_many(1024)
            if not results:
                if ended:
                    live.remove(c)
                continue
            done[which[id(c)]] += len(results)
            for n, square in map(RESULT.unpack, results):
                duplicates += seen[n]
                seen[n] = 1
                wrong += square != n * n
    finished = time.monotonic()
    for c in inboxes:
        c.close()
    report.put((done, count - sum(seen), duplicates, wrong, finished))


def main(workers=4, count=500_000):
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # kill PID cleans up as Ctrl-C does
    tasks = f"example-pool-tasks-{os.getpid()}"
    results = [f"example-pool-results{i}-{os.getpid()}" for i in range(workers)]
    ready, report = multiprocessing.Semaphore(0), multiprocessing.Queue()
    procs = []
    try:
        with shmq.Producer(tasks, slot_size=TASK.size, capacity=4096, lossless=True,
                           unlink_on_close=True) as dispatcher:
            procs = [multiprocessing.Process(target=worker, args=(tasks, name, ready)) for name in results]
            procs.append(multiprocessing.Process(target=collector, args=(results, count, ready, report)))
            for proc in procs:
                proc.start()
            for _ in procs:  # every worker has joined the group, the collector holds every results queue
                if not ready.acquire(timeout=30):
                    sys.exit("a worker or the collector did not start")
            started = time.monotonic()
            for first in range(0, count, 4096):
                if not all(proc.is_alive() for proc in procs):
                    sys.exit("a worker or the collector died")
                dispatcher.publish_many([TASK.pack(n) for n in range(first, min(first + 4096, count))],
                                        timeout=30)  # waits while the workers are a ring behind
        # Leaving the block closed the dispatcher: the end of the tasks travels down the pool.
        while True:
            alive = procs[-1].is_alive()  # before the get: a collector that reported has flushed it
            try:
                done, missing, duplicates, wrong, finished = report.get(timeout=1)
                break
            except queue.Empty:
                if not alive:
                    sys.exit("the collector failed")
        for proc in procs:
            proc.join(30)
        elapsed = finished - started
        for i, n in enumerate(done):
            print(f"worker {i}: {n:,} tasks, {n / elapsed:,.0f} tasks/s")
        print(f"total: {sum(done):,} of {count:,} tasks in {elapsed:.2f} s, {sum(done) / elapsed:,.0f} tasks/s")
        if missing or duplicates or wrong:
            sys.exit(f"the pool lost {missing}, repeated {duplicates} and got {wrong} results wrong")
        if any(proc.exitcode for proc in procs):
            sys.exit("a worker or the collector failed")
        print("every task done exactly once, every result right")
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.kill()
                proc.join()
        for name in [tasks, *results]:  # on success already gone; after a failure, not left behind
            try:
                shmq.unlink(name, force=True)
            except shmq.QueueNotFound:
                pass


if __name__ == "__main__":
    main(*map(int, sys.argv[1:3]))
