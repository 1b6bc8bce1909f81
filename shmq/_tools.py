"""python -m shmq list | unlink: find and remove segments, e.g. after a crash.

Geometry comes from the C core (a Consumer validates the header); this module
never reads the segment's fields itself.
"""
import os
import sys

import shmq

SHM_DIR = "/dev/shm"


def queue_names():
    try:
        files = sorted(os.listdir(SHM_DIR))
    except FileNotFoundError:
        return []
    # A queue's consumer state (NAME.consumers) goes with its queue.
    return [f[len(shmq.NAME_PREFIX):] for f in files
            if f.startswith(shmq.NAME_PREFIX) and not f.endswith(".consumers")]


def list_queues(out=sys.stdout) -> int:
    names = queue_names()
    if not names:
        print("no shmq queues in /dev/shm", file=out)
        return 0
    print(f"{'NAME':<32} {'BYTES':>12} {'SLOT':>8} {'SLOTS':>9} {'NEXT SEQ':>14}  PRODUCER", file=out)
    for name in names:
        path = os.path.join(SHM_DIR, shmq.NAME_PREFIX + name)
        try:
            size = os.stat(path).st_size
        except FileNotFoundError:
            continue
        try:
            # register=False: looking must not take a consumer entry.
            with shmq.Consumer(name, register=False) as c:
                producer = "live" if c.producer_alive else "ended" if c.ended else "none"
                print(f"{name:<32} {size:>12,} {c.slot_size:>8} {c.capacity:>9} {c.position:>14}  {producer}", file=out)
        except (shmq.ShmqError, ValueError, OSError) as e:
            print(f"{name:<32} {size:>12,} {'-':>8} {'-':>9} {'-':>14}  ?  ({type(e).__name__}: {e})", file=out)
    return 0


def unlink_queues(names, force=False) -> int:
    status = 0
    for name in names:
        try:
            shmq.unlink(name, force=force)
            print(f"removed {name}")
        except (shmq.ShmqError, ValueError, OSError) as e:
            print(f"{name}: {e}", file=sys.stderr)
            status = 1
    return status
