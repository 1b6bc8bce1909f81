"""Video-like numpy frames with zero copies: a camera process renders each
frame straight into the ring (Producer.loan), and a viewer reads it where it
lies (Consumer.view), so a frame crosses memory once.

The queue is lossy, as live video usually is: the camera never waits, and a
viewer that is too slow skips frames and counts them in `lost`. A view the
camera overwrote while the viewer was still reading raises
shmq.Overwritten on leaving the block; the viewer discards what it computed
from it (those bytes may be torn), and the frame counts as lost too. Either
way, received + lost == frames published since the viewer started.

    python examples/numpy_frames.py [FRAMES]
"""
import multiprocessing
import os
import sys

import numpy as np

import shmq

HEIGHT, WIDTH = 480, 640  # one float32 channel: 1.2 MB a frame
FRAME_BYTES = HEIGHT * WIDTH * 4


def viewer(name, ready, result):
    with shmq.Consumer(name) as c:
        ready.set()
        received = wrong = overwritten = 0
        while True:
            ended = c.ended  # looked at first: if the stream had ended, no frame can follow
            try:
                with c.view(timeout=0.5) as msg:
                    if msg is None:
                        if ended:  # the camera closed the stream, and all is read
                            break
                        continue
                    frame = np.frombuffer(msg, dtype=np.float32).reshape(HEIGHT, WIDTH)
                    index = int(frame[0, 0])
                    ok = bool((frame[:, -1] == index + WIDTH - 1).all())
                    del frame  # nothing may point into the slot after the block
            except shmq.Overwritten:
                overwritten += 1  # counted in c.lost; `ok` is not to be trusted
                continue
            received += 1
            wrong += not ok
        result.put((received, c.lost, wrong, overwritten, c.position))


def main(frames=300):
    name = f"example-frames-{os.getpid()}"
    ramp = np.arange(WIDTH, dtype=np.float32)
    ready, result = multiprocessing.Event(), multiprocessing.Queue()
    with shmq.Producer(name, slot_size=FRAME_BYTES, capacity=4, unlink_on_close=True) as camera:
        view = multiprocessing.Process(target=viewer, args=(name, ready, result))
        view.start()
        if not ready.wait(30):
            sys.exit("the viewer did not start")
        first = camera.next_sequence
        for i in range(frames):
            with camera.loan(FRAME_BYTES) as buf:  # the next slot, writable
                frame = np.frombuffer(buf, dtype=np.float32).reshape(HEIGHT, WIDTH)
                np.add(ramp, np.float32(i), out=frame)  # rendered straight into shared memory
                del frame
    received, lost, wrong, overwritten, position = result.get(timeout=60)
    view.join(30)
    published = position - first
    print(f"camera: {frames} frames of {FRAME_BYTES >> 10} KiB; viewer: {received} received, "
          f"{lost} lost ({overwritten} of them overwritten while viewed), {wrong} wrong")
    if received + lost != published or published != frames or wrong or view.exitcode:
        sys.exit("received + lost != published, or a wrong frame was delivered")


if __name__ == "__main__":
    main(*map(int, sys.argv[1:2]))
