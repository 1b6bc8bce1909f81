"""A/B of the 64-byte publish/poll hot path between two builds of shmq.

    python benchmarks/ab_hotpath.py OLD_SITE NEW_SITE [--rounds 7] [--seconds 1]

OLD_SITE and NEW_SITE are folders holding an installed shmq (for example
`pip install --no-deps --target /tmp/old .` at the old commit). Two measures,
each interleaved old/new/old/new... in one run so both builds see the same
machine:

- delivered rate, 1 producer -> 1 consumer in two processes, 64-byte
  messages, publish(bytes) and poll() one call per message (the consumer is
  the limit);
- instructions per publish+poll pair in one process under callgrind
  (deterministic: immune to a busy machine), when valgrind is installed.

It prints the per-round figures, the medians and new/old ratios.
"""
import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap

RATE = textwrap.dedent("""
    import os, sys, time
    import shmq
    name, seconds = sys.argv[1], float(sys.argv[2])
    msg = b"x" * 64
    p = shmq.Producer(name, slot_size=64, capacity=65536, unlink_on_close=True)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        c = shmq.Consumer(name, start="earliest")
        os.write(w, b"r")
        def drain():
            poll = c.poll
            n = 0
            deadline = time.perf_counter() + seconds
            while time.perf_counter() < deadline:
                for _ in range(1000):
                    if poll() is not None:
                        n += 1
            return n
        n = drain()
        os.write(w, b"%d %d" % (n, c.lost))
        os._exit(0)
    os.read(r, 1)
    publish = p.publish
    deadline = time.perf_counter() + seconds + 0.2
    while time.perf_counter() < deadline:
        for _ in range(1000):
            publish(msg)
    got = os.read(r, 64).split()
    os.waitpid(pid, 0)
    p.close()
    print(int(got[0]) / seconds)
""")

PAIRS = textwrap.dedent("""
    import sys
    import shmq
    def run(n):
        msg = b"x" * 64
        with shmq.Producer(sys.argv[1], slot_size=64, capacity=1024, unlink_on_close=True) as p:
            with shmq.Consumer(sys.argv[1]) as c:
                publish, poll = p.publish, c.poll
                for _ in range(n):
                    publish(msg)
                    poll()
    run(int(sys.argv[2]))
""")


def rate(site, name, seconds):
    env = dict(os.environ, PYTHONPATH=site)
    out = subprocess.run([sys.executable, "-c", RATE, name, str(seconds)], env=env,
                         capture_output=True, text=True, check=True, cwd=tempfile.gettempdir())
    return float(out.stdout.split()[-1])


def instructions(site, name, pairs):
    """Instructions for `pairs` publish+poll pairs, less those for none."""
    def count(n):
        with tempfile.TemporaryDirectory() as d:
            out = os.path.join(d, "cg")
            env = dict(os.environ, PYTHONPATH=site, PYTHONHASHSEED="0")
            subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                            sys.executable, "-c", PAIRS, name, str(n)], env=env,
                           capture_output=True, check=True, cwd=d)
            with open(out) as f:
                for line in f:
                    if line.startswith("summary:") or line.startswith("totals:"):
                        return int(line.split()[1])
        raise RuntimeError("no callgrind totals")
    return (count(pairs) - count(0)) / pairs


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("old")
    ap.add_argument("new")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("--pairs", type=int, default=200_000)
    args = ap.parse_args()
    builds = {"old": os.path.abspath(args.old), "new": os.path.abspath(args.new)}
    rates = {"old": [], "new": []}
    for i in range(args.rounds):
        for label in (("old", "new") if i % 2 == 0 else ("new", "old")):
            rates[label].append(rate(builds[label], f"ab-{os.getpid()}-{label}", args.seconds))
        print(f"round {i + 1}: old {rates['old'][-1] / 1e6:.2f} M/s, new {rates['new'][-1] / 1e6:.2f} M/s",
              flush=True)
    ratios = [n / o for o, n in zip(rates["old"], rates["new"])]
    print(f"delivered 64 B, 1P->1C: old median {statistics.median(rates['old']) / 1e6:.2f} M/s, "
          f"new median {statistics.median(rates['new']) / 1e6:.2f} M/s, "
          f"pairwise new/old median {statistics.median(ratios):.3f}")
    if shutil.which("valgrind"):
        ins = {label: instructions(site, f"ab-cg-{os.getpid()}-{label}", args.pairs)
               for label, site in builds.items()}
        print(f"instructions per publish+poll pair: old {ins['old']:.0f}, new {ins['new']:.0f} "
              f"({ins['new'] / ins['old'] - 1:+.1%})")


if __name__ == "__main__":
    main()
