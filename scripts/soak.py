#!/usr/bin/env python3
"""A bounded soak: one C producer, eight Python consumers, some of them killed.

    python3 scripts/soak.py [--seconds 60] [--rate 200000] [--consumers 8]
                            [--churn 4] [--every 2]

The C producer (make -s producer) publishes self-checking 64-byte messages
(shmq/_pattern.py) at --rate into a 4096-slot ring. Every consumer process
checks every message it receives: its pattern, and that its number is the
sequence it was read at. --churn of the consumers are SIGKILLed and replaced
every --every seconds; the others live through the whole run.

Every --every seconds the soak samples the resident set and the open
descriptors of the long-lived consumers and of the producer (/proc), the
queue's entries in /dev/shm, and which consumer entries are held (the lock
the kernel drops when a consumer dies). At the end it requires:

  - resident set growth below 10 MiB per process, descriptor counts flat;
  - exactly the queue's two objects in /dev/shm during the run, none after;
  - no more consumer entries held than consumer processes alive, and none
    once they are all gone (a killed consumer's entry is freed);
  - for every consumer incarnation, killed ones included (their last report):
    received + lost == position - start, and 0 corrupt.

Prints a summary; exits 0 if all hold, 1 otherwise. It runs from a checkout:
the consumers import the shmq of this tree.
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import shmq  # noqa: E402  (the checkout's, not an installed one)

ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
MIB = 1024 * 1024

# A consumer: checks every message, reports "stat" lines (each one a moment at
# which received + lost == position - start must hold) and a "final" line once
# the producer has closed the stream and everything is read.
CONSUMER = textwrap.dedent("""
    import json, sys, time, shmq
    from shmq import _pattern
    name = sys.argv[1]
    c = shmq.Consumer(name)
    start = c.position
    received = corrupt = 0
    last = start - 1
    problems = []
    next_report = 0.0

    def report(kind):
        print(kind, json.dumps({"start": start, "position": c.position, "lost": c.lost,
                                "received": received, "corrupt": corrupt, "problems": problems}),
              flush=True)

    report("stat")
    while True:
        lost_before = c.lost
        batch = c.poll_many(256, timeout=0.1)
        if batch:
            position = c.position
            for i, msg in enumerate(batch):
                number = _pattern.check(msg)
                # With no loss inside the batch every message's sequence is known
                # exactly; with loss, at least the order and the last one are.
                if c.lost == lost_before:
                    expected_ok = number == position - len(batch) + i
                else:
                    expected_ok = number > last and (i < len(batch) - 1 or number == position - 1)
                if number < 0 or not expected_ok:
                    corrupt += 1
                    if len(problems) < 5:
                        problems.append(f"got {number} after {last} at position {position}")
                last = max(last, number)
            received += len(batch)
        elif c.ended:
            while True:  # the mark came after the last message: drain, then stop
                rest = c.poll_many(256)
                if not rest:
                    break
                for msg in rest:
                    number = _pattern.check(msg)
                    if number < 0 or number <= last:
                        corrupt += 1
                    last = max(last, number)
                received += len(rest)
            report("final")
            break
        now = time.monotonic()
        if now >= next_report:
            report("stat")
            next_report = now + 0.1
""")


class Process:
    """A child whose stdout lines a thread reads; keeps the last report."""

    def __init__(self, argv, label):
        self.label = label
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env=ENV, cwd=ROOT)
        self.pid = self.proc.pid
        STARTED.add(self.pid)
        self.last = None   # last "stat" or "final" report
        self.final = None
        self.output = []
        self.errors = []
        self._threads = [threading.Thread(target=self._read_out, daemon=True),
                         threading.Thread(target=self._read_err, daemon=True)]
        for t in self._threads:
            t.start()

    def _read_out(self):
        for line in self.proc.stdout:
            kind, _, rest = line.strip().partition(" ")
            if kind in ("stat", "final"):
                try:
                    self.last = json.loads(rest)
                except ValueError:
                    continue
                if kind == "final":
                    self.final = self.last
            else:
                self.output.append(line.rstrip("\n"))

    def _read_err(self):
        for line in self.proc.stderr:
            self.errors.append(line.rstrip("\n"))

    def alive(self):
        return self.proc.poll() is None

    def stop(self, sig=signal.SIGKILL, timeout=30):
        if self.alive():
            self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for t in self._threads:
            t.join(timeout=10)
        self.proc.stdout.close()
        self.proc.stderr.close()


def rss_bytes(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def fd_count(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def shm_entries(name):
    ring = f"shmq-{name}"
    return sorted(e for e in os.listdir("/dev/shm") if e == ring or e.startswith(ring + "."))


def entries_held(name):
    """How many consumer entries someone holds, as shmq.inspect sees them
    (the kernel's locks); -1 if it can't tell."""
    try:
        return len(shmq.inspect(name)["consumers"])
    except (shmq.ShmqError, OSError):
        return -1


STARTED = set()  # every pid the soak started: whose System V segments count


def sysv_segments():
    """System V shared-memory segments that the soak's own processes made
    (the wake page and the consumers' entry pages are such segments): other
    programs on the machine make and remove segments of their own meanwhile."""
    with open("/proc/sysvipc/shm") as f:
        lines = f.read().splitlines()[1:]
    return sum(1 for line in lines if int(line.split()[4]) in STARTED)  # the creator's pid


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--rate", type=int, default=200_000, help="messages per second")
    parser.add_argument("--consumers", type=int, default=8)
    parser.add_argument("--churn", type=int, default=4, help="consumers killed and replaced")
    parser.add_argument("--every", type=float, default=2.0, help="seconds between samples and kills")
    parser.add_argument("--name", default=f"soak-{os.getpid()}")
    args = parser.parse_args()
    if not 0 <= args.churn < args.consumers:
        parser.error("--churn must be at least 0 and less than --consumers")

    subprocess.run(["make", "-s", "producer"], cwd=ROOT, check=True)
    name = args.name
    failures = []
    long_lived, churned, retired = [], [], []
    producer = None
    samples = []  # (time, {label: (rss, fds)}, shm entries, entries held, consumers alive,
    #               System V segments on the machine)
    kills, held_after, during, published = 0, None, set(), "?"
    segments_before, segments_during = sysv_segments(), 0
    running_most = args.consumers
    try:
        producer = Process([str(ROOT / "producer"), name, "--size", "64", "--rate", str(args.rate),
                            "--capacity", "4096"], "producer")
        deadline = time.monotonic() + 10
        while not shmq.exists(name):
            if time.monotonic() > deadline or not producer.alive():
                raise SystemExit(f"soak: the producer did not create {name}: {producer.errors}")
            time.sleep(0.01)
        time.sleep(0.05)  # let it publish its header

        def consumer(label):
            return Process([sys.executable, "-c", CONSUMER, name], label)

        long_lived = [consumer(f"long-{i}") for i in range(args.consumers - args.churn)]
        churned = [consumer(f"churn-{i}.0") for i in range(args.churn)]
        started = time.monotonic()
        next_tick = started + args.every
        while time.monotonic() - started < args.seconds:
            time.sleep(max(0.0, next_tick - time.monotonic()))
            next_tick += args.every
            dead = [p for p in long_lived + churned + [producer] if not p.alive()]
            if dead:
                failures.append("died on its own: " + ", ".join(
                    f"{p.label} ({p.proc.returncode}: {' '.join(p.errors[-3:])})" for p in dead))
                break
            procs = {p.label: (rss_bytes(p.pid), fd_count(p.pid)) for p in long_lived + [producer]}
            running = len(long_lived) + len(churned)
            samples.append((time.monotonic() - started, procs, shm_entries(name), entries_held(name),
                            running, sysv_segments()))
            # Replace the churned consumers: SIGKILL, whatever they are doing.
            for i, old in enumerate(churned):
                old.stop(signal.SIGKILL)
                kills += 1
                retired.append(old)
                generation = int(old.label.rsplit(".", 1)[1]) + 1
                churned[i] = consumer(f"churn-{i}.{generation}")

        # End of the run: the producer closes the stream, long-lived consumers
        # drain and report; the churned ones are killed once more.
        for old in churned:
            old.stop(signal.SIGKILL)
            kills += 1
            retired.append(old)
        churned = []
        producer.stop(signal.SIGINT)
        published = next((line for line in producer.output if line.startswith("published=")), "?")
        for p in long_lived:
            try:
                p.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                failures.append(f"{p.label} did not stop at the end of the stream")
            p.stop()
        held_after = entries_held(name)
        during = {tuple(s[2]) for s in samples}
        segments_during = max(s[5] for s in samples) if samples else 0
        shmq.unlink(name)
    finally:
        for p in long_lived + churned + ([producer] if producer else []):
            p.stop()
        try:
            shmq.unlink(name, force=True)
        except shmq.QueueNotFound:
            pass
    after = shm_entries(name)

    # ------------------------------------------------------------ verdicts
    expected = (f"shmq-{name}", f"shmq-{name}.consumers", f"shmq-{name}.producer")
    if not samples:
        failures.append("no samples taken")
    if during - {expected}:
        failures.append(f"/dev/shm held {sorted(during - {expected})} during the run")
    if after:
        failures.append(f"/dev/shm still holds {after} after the run")
    segments_after = sysv_segments()
    # The wake page and one page per live consumer, at most (counting only
    # the segments the soak's processes made).
    if samples and segments_during - segments_before > running_most + 1:
        failures.append(f"{segments_during - segments_before} System V segments during the run, "
                        f"for at most {running_most} consumers")
    if segments_after > segments_before:
        failures.append(f"{segments_after - segments_before} System V segments left after the run")
    for t, _, _, held, running, _ in samples:
        if held < 0 or held > running:
            failures.append(f"at {t:.1f} s {held} consumer entries held by {running} consumers")
    if held_after != 0:
        failures.append(f"{held_after} consumer entries still held with every consumer gone")
    labels = [p.label for p in long_lived] + ["producer"]
    growth = {}
    for label in labels:
        rss = [s[1][label][0] for s in samples if label in s[1]]
        fds = [s[1][label][1] for s in samples if label in s[1]]
        if not rss:
            continue
        growth[label] = (rss[-1] - rss[0], min(fds), max(fds))
        if rss[-1] - rss[0] >= 10 * MIB:
            failures.append(f"{label}: resident set grew by {(rss[-1] - rss[0]) / MIB:.1f} MiB")
        if min(fds) != max(fds):
            failures.append(f"{label}: open descriptors went from {min(fds)} to {max(fds)}")
    incarnations = long_lived + retired
    total_received = total_lost = 0
    for p in incarnations:
        report = p.final if p in long_lived else p.last
        if p in long_lived and p.final is None:
            failures.append(f"{p.label} gave no final report ({' '.join(p.errors[-3:])})")
            continue
        if report is None:
            continue  # killed before it had opened the queue
        total_received += report["received"]
        total_lost += report["lost"]
        if report["received"] + report["lost"] != report["position"] - report["start"]:
            failures.append(f"{p.label}: received {report['received']} + lost {report['lost']} != "
                            f"position {report['position']} - start {report['start']}")
        if report["corrupt"]:
            failures.append(f"{p.label}: {report['corrupt']} corrupt: {report['problems']}")

    print(f"soak {name}: {args.seconds:.0f} s, producer {published}")
    print(f"  {len(long_lived)} long-lived and {len(incarnations) - len(long_lived)} killed consumer "
          f"incarnations ({kills} SIGKILLs): received {total_received}, lost {total_lost}")
    for p in long_lived:
        r = p.final or {}
        print(f"  {p.label}: received {r.get('received')} lost {r.get('lost')} "
              f"corrupt {r.get('corrupt')}")
    for label, (rss, low, high) in growth.items():
        print(f"  {label}: resident set {rss / MIB:+.2f} MiB over the run, descriptors {low}..{high}")
    print(f"  System V segments: {segments_before} before, at most {segments_during} during, "
          f"{segments_after} after")
    print(f"  {len(samples)} samples; /dev/shm during: {sorted(during)}; after: {after}; "
          f"entries held at most {max((s[3] for s in samples), default=0)}, after {held_after}")
    for failure in failures:
        print("FAIL", failure)
    print("soak: " + ("FAILED" if failures else "passed"))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
