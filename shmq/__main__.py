"""python -m shmq demo | bench ...  (see --help)."""
import argparse
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shmq", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="one producer, two consumers, live rates and loss counts")
    demo.add_argument("--seconds", type=float, default=4.0, help="how long to publish (default 4)")
    demo.add_argument("--size", type=int, default=64, help="message size in bytes (default 64)")
    demo.add_argument("--capacity", type=int, default=4096, help="ring slots (default 4096)")
    bench = sub.add_parser(
        "bench", help="a quick measurement of shmq alone: 1 producer -> 1 consumer process",
        description="Publishes for a few seconds from one process and polls from another, one call "
                    "per message, and prints both rates and the loss count. The full suite against "
                    "other IPC libraries is benchmarks/run.py in the source repository.")
    bench.add_argument("--seconds", type=float, default=3.0, help="how long to publish (default 3)")
    bench.add_argument("--size", type=int, default=64, help="message size in bytes (default 64)")
    bench.add_argument("--capacity", type=int, help="ring slots (default 65536, fewer for big messages)")
    sub.add_parser("list", help="list the queues in /dev/shm with their geometry and producer")
    remove = sub.add_parser("unlink", help="remove queues (e.g. left behind by a crash)")
    remove.add_argument("names", nargs="+")
    args = parser.parse_args(argv)
    if args.command in ("list", "unlink"):
        from . import _tools

        return _tools.list_queues() if args.command == "list" else _tools.unlink_queues(args.names)
    if args.command == "demo":
        from . import _demo

        return _demo.run(seconds=args.seconds, size=args.size, capacity=args.capacity)
    from . import _bench

    return _bench.run(seconds=args.seconds, size=args.size, capacity=args.capacity)


if __name__ == "__main__":
    sys.exit(main())
