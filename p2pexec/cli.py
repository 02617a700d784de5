"""The `p2pexec` command. Each subcommand registers itself with one `add_*` function below;
`main` parses and dispatches, returning the process exit code."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from p2pexec.errors import LocalUsageError
from p2pexec.net.security import TOKEN_ENV, ClusterKeys, new_token, resolve_token


def _token_new(args: argparse.Namespace) -> int:
    print(new_token())
    return 0


def _token_id(args: argparse.Namespace) -> int:
    token = resolve_token(args.token)
    if token is None:
        print(f"p2pexec: no token given (use --token or ${TOKEN_ENV})", file=sys.stderr)
        return 2
    print(ClusterKeys(token).cluster_id)
    return 0


def add_token_command(subparsers: argparse._SubParsersAction) -> None:
    """`p2pexec token new` prints a fresh cluster token; `p2pexec token id` prints the
    cluster id derived from one (safe to share: the token cannot be recovered from it)."""
    token = subparsers.add_parser("token", help="create or inspect cluster tokens")
    actions = token.add_subparsers(dest="token_action", required=True)
    actions.add_parser("new", help="print a new random cluster token").set_defaults(
        run=_token_new)
    show = actions.add_parser("id", help="print the cluster id derived from a token")
    show.add_argument("--token", help=f"the cluster token (default: ${TOKEN_ENV})")
    show.set_defaults(run=_token_id)


def _demo(args: argparse.Namespace) -> int:
    from p2pexec import demo

    ok = demo.run(samples=args.samples, batches=args.batches, num_cpus=args.cpus)
    return 0 if ok else 1


def add_demo_command(subparsers: argparse._SubParsersAction) -> None:
    """`p2pexec demo`: Monte Carlo pi with nested tasks and a parameter-server actor, on an
    embedded node (no daemon, no configuration)."""
    demo = subparsers.add_parser("demo", help="run a checked demo workload on this machine")
    demo.add_argument("--samples", type=int, default=20_000_000,
                      help="Monte Carlo samples in total (default 20,000,000)")
    demo.add_argument("--batches", type=int, default=40,
                      help="batch tasks, each fanning out 10 sampling tasks (default 40)")
    demo.add_argument("--cpus", type=float, default=None,
                      help="CPUs for the embedded node (default: all)")
    demo.set_defaults(run=_demo)


def build_parser() -> argparse.ArgumentParser:
    """The whole command line: one `add_*_command` per subcommand."""
    parser = argparse.ArgumentParser(prog="p2pexec",
                                     description="Peer-to-peer distributed execution.")
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_token_command(subparsers)
    add_demo_command(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; usage errors print one line and return 2."""
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except LocalUsageError as exc:
        print(f"p2pexec: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
