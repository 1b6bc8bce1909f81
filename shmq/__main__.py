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
    sub.add_parser("bench", help="benchmarks against other IPC libraries (see --help)", add_help=False)
    sub.add_parser("list", help="list the queues in /dev/shm with their geometry and producer")
    remove = sub.add_parser("unlink", help="remove queues (e.g. left behind by a crash)")
    remove.add_argument("names", nargs="+")
    args, rest = parser.parse_known_args(argv)
    if args.command in ("list", "unlink"):
        if rest:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        from . import _tools

        return _tools.list_queues() if args.command == "list" else _tools.unlink_queues(args.names)
    if args.command == "demo":
        if rest:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        from . import _demo

        return _demo.run(seconds=args.seconds, size=args.size, capacity=args.capacity)
    from . import _bench

    return _bench.main(rest)


if __name__ == "__main__":
    sys.exit(main())
