"""shmq: look at, follow and remove shmq queues; run the demo or a quick benchmark."""
import argparse
import sys

DOCS = "https://github.com/shmq/shmq/blob/main/docs"

EPILOG = f"""exit codes:
  0  ok
  1  an operation failed (e.g. rm refused a queue with a live producer)
  2  usage error
  3  no such queue

Ctrl-C ends stat --watch and tail --follow cleanly (exit 0).
What each command shows, and where it comes from: {DOCS}/cli.md"""


def _positive(text):
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text}")
    return value


def _count(text):
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more: {text}")
    return value


def _at_least_one(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be positive (an integer): {text}")
    return value


def _parser():
    parser = argparse.ArgumentParser(prog="shmq", description=__doc__, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    from . import __version__

    parser.add_argument("--version", action="version", version=f"shmq {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{ls,stat,tail,rm,demo,bench,bridge}")

    def listing(name, **kw):
        p = sub.add_parser(name, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter, **kw)
        p.add_argument("--json", action="store_true", help="one JSON list of objects, for scripts")
        return p

    sub.add_parser("bridge", help="carry a queue to other hosts over Zenoh: bridge out|in "
                                  f"(pip install shmq[bridge]; see {DOCS}/bridge.md)")
    listing("ls", help="list the queues in /dev/shm: owner, size, geometry, mode, head, producer, "
                       "consumers")
    listing("list")  # hidden alias of ls: no help= keeps it out of the listing

    stat = sub.add_parser("stat", help="one queue in detail: publish rate, each live consumer's lag, "
                                       "who holds a lossless producer back",
                          epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    stat.add_argument("name")
    stat.add_argument("--json", action="store_true", help="one JSON object (one per line with --watch)")
    stat.add_argument("--watch", action="store_true", help="repeat until Ctrl-C")
    stat.add_argument("--interval", type=_positive, default=1.0, metavar="S",
                      help="seconds over which the rate is measured (default 1)")

    tail = sub.add_parser("tail", help="print a queue's messages as they arrive, like tail -f",
                          epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    tail.add_argument("name")
    tail.add_argument("-n", type=_count, default=10, metavar="N", help="start N messages back (default 10)")
    tail.add_argument("-f", "--follow", action="store_true",
                      help="keep printing new messages until Ctrl-C, --count or --timeout: waits "
                           "for the queue to appear, and follows it across producer runs and "
                           "across its removal and re-creation")
    tail.add_argument("--count", type=_at_least_one, metavar="N",
                      help="exit after printing N messages")
    tail.add_argument("--timeout", type=_positive, metavar="S",
                      help="with --follow: exit when nothing arrived for S seconds (default: wait "
                           "forever); a queue that did not appear by then exits 3")
    tail.add_argument("--format", choices=("text", "hex", "len", "json"), default="text",
                      help="text: utf-8, one line each, control characters escaped; hex; "
                           "len: sequence and length; json: seq, len, data (base64) and text "
                           "when it is utf-8")

    def removal(name, **kw):
        p = sub.add_parser(name, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
                           description="Remove queues. A queue with a live producer is refused "
                                       "unless --force.", **kw)
        p.add_argument("names", nargs="*", metavar="NAME")
        p.add_argument("--force", action="store_true", help="remove even a queue with a live producer")
        p.add_argument("--stale", action="store_true",
                       help="also remove every queue with neither a live producer nor a live "
                            "consumer, and the lock files of queues that are gone")
        p.add_argument("--dry-run", action="store_true",
                       help="print what would be removed, remove nothing")
        return p

    removal("rm", help="remove queues (e.g. left behind by a crash)")
    removal("unlink")  # hidden alias of rm

    demo = sub.add_parser("demo", help="one producer, two consumers, live rates and loss counts")
    demo.add_argument("--seconds", type=_positive, default=4.0, help="how long to publish (default 4)")
    demo.add_argument("--size", type=_at_least_one, default=64, help="message size in bytes (default 64)")
    demo.add_argument("--capacity", type=_at_least_one, default=4096, help="ring slots (default 4096)")
    bench = sub.add_parser(
        "bench", help="a quick measurement of shmq alone: 1 producer -> 1 consumer process",
        description="Publishes for a few seconds from one process and polls from another, one call "
                    "per message, and prints both rates and the loss count. The full suite against "
                    "other IPC libraries is benchmarks/run.py in the source repository.")
    bench.add_argument("--seconds", type=_positive, default=3.0, help="how long to publish (default 3)")
    bench.add_argument("--size", type=_at_least_one, default=64, help="message size in bytes (default 64)")
    bench.add_argument("--capacity", type=_at_least_one,
                       help="ring slots, a power of two (default 65536, fewer for big messages)")
    # Hide the aliases from the subcommand list in --help.
    sub._choices_actions = [a for a in sub._choices_actions if a.dest not in ("list", "unlink")]
    return parser


def _run(args, parser):
    if args.command == "demo":
        from . import _demo

        return _demo.run(seconds=args.seconds, size=args.size, capacity=args.capacity)
    if args.command == "bench":
        from . import _bench

        return _bench.run(seconds=args.seconds, size=args.size, capacity=args.capacity)
    from . import _tools

    if args.command in ("ls", "list"):
        return _tools.list_queues(as_json=args.json)
    if args.command == "stat":
        return _tools.stat_queue(args.name, as_json=args.json, watch=args.watch, interval=args.interval)
    if args.command == "tail":
        if args.timeout is not None and not args.follow:
            parser.error("tail: --timeout needs --follow")
        return _tools.tail_queue(args.name, count=args.n, follow=args.follow, fmt=args.format,
                                 limit=args.count, timeout=args.timeout)
    if not args.names and not args.stale:
        parser.error(f"{args.command}: give queue names or --stale")
    return _tools.unlink_queues(args.names, force=args.force, stale=args.stale, dry_run=args.dry_run)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bridge"]:  # its own parser, in shmq/bridge.py
        from . import bridge

        return bridge.main(argv[1:])
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return _run(args, parser)
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:
        # The reader went away (e.g. `shmq tail ... | head`): stop quietly.
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as e:  # one line on stderr, never a traceback
        from . import _tools

        if isinstance(e, _tools.NoQueue):
            print(f"shmq {args.command}: no queue {e.args[0]!r}", file=sys.stderr)
            return _tools.EXIT_NO_QUEUE
        text = _tools.printable(str(e).splitlines()[0]) if str(e) else ""
        print(f"shmq {args.command}: {type(e).__name__}: {text}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
