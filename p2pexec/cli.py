"""The `p2pexec` command. Each subcommand registers itself with one `add_*` function below;
`main` parses and dispatches, returning the process exit code."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from p2pexec.errors import LocalUsageError
from p2pexec.net.security import TOKEN_ENV, ClusterKeys, new_token, resolve_token

if TYPE_CHECKING:  # the node's modules load only for the commands that run one
    from p2pexec.config import NodeConfig


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

    if args.nodes > 1:
        ok = demo.run_mesh(args.nodes, samples=args.samples, batches=args.batches,
                           num_cpus=args.cpus)
    else:
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
                      help="CPUs for the embedded node (default: all), or for each node "
                           "with --nodes (default 1)")
    demo.add_argument("--nodes", type=int, default=1,
                      help="run across this many `p2pexec join` processes on 127.0.0.1 and "
                           "SIGKILL one part-way (default 1: an embedded node)")
    demo.set_defaults(run=_demo)


def _parse_resources(text: str) -> dict[str, float]:
    """`tpu=1,fpga=0.5` -> {"tpu": 1.0, "fpga": 0.5}."""
    resources: dict[str, float] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, amount = item.partition("=")
        try:
            resources[name.strip()] = float(amount)
        except ValueError:
            sep = ""
        if not sep or not name.strip():
            raise argparse.ArgumentTypeError(f"expected name=amount, got {item!r}")
    return resources


def join_config(args: argparse.Namespace, token: str) -> NodeConfig:
    """The node `p2pexec join` runs, from its options; its GPUs are those `nvidia-smi`
    lists unless `--gpus` says."""
    from p2pexec.config import ClusterConfig, NodeConfig, default_data_dir, detect_gpus
    from p2pexec.exec.config import ExecConfig
    from p2pexec.net.discovery import parse_seed

    settings = {"data_dir": args.data_dir or default_data_dir(), "host": args.host,
                "port": args.port, "peers": tuple(parse_seed(p) for p in args.peer),
                "mdns": not args.no_mdns, "advertise_host": args.advertise}
    cluster = ClusterConfig.preset(args.gossip, token, **settings)
    return NodeConfig(exec=ExecConfig(num_cpus=args.cpus,
                                      object_store_memory=args.object_store_memory),
                      resources=args.resources,
                      num_gpus=detect_gpus() if args.gpus is None else args.gpus,
                      cluster=cluster, **({"name": args.name} if args.name else {}))


def _join(args: argparse.Namespace) -> int:
    import logging

    import trio

    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    token = resolve_token(args.token)
    generated = token is None
    if token is None:
        token = new_token()
    config = join_config(args, token)
    try:
        trio.run(_run_joined, config, generated)
    except BaseException as exc:  # trio wraps failures in exception groups
        failure = _first_failure(exc)
        if failure is None:
            raise
        print(f"p2pexec join: {failure}", file=sys.stderr)
        return 1
    return 0


def _first_failure(exc: BaseException) -> BaseException | None:
    """The user-facing error (bad usage, address in use...) inside an exception group."""
    if isinstance(exc, (LocalUsageError, OSError)):
        return exc
    for inner in getattr(exc, "exceptions", ()):  # an exception group
        found = _first_failure(inner)
        if found is not None:
            return found
    return None


async def _run_joined(config: NodeConfig, generated: bool) -> None:
    """Run the node until SIGINT or SIGTERM, then leave the cluster gracefully."""
    import logging
    import signal

    import trio

    from p2pexec.exec.output import print_output
    from p2pexec.net.transport import format_address
    from p2pexec.node import Node

    node = Node(config)
    node.exec.unclaimed_output = print_output  # tasks whose driver left, or does not read
    cluster = node.cluster
    assert cluster is not None and cluster.address is None
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(node.run)
            address = format_address(cluster.address)
            print(f"node {node.config.name} ({node.node_id.short}) listening on {address}\n"
                  f"cluster id {cluster.cluster_id}\n"
                  f"control socket {node.control.path if node.control else '-'}", flush=True)
            if generated:
                print(f"created a new cluster token; on other machines run:\n"
                      f"  p2pexec join --token {cluster.config.token} --peer {address}\n"
                      f"anyone holding this token can run code on every node: keep it secret",
                      flush=True)
            async for signum in signals:
                logging.getLogger("p2pexec.cluster").info(
                    "%s received: leaving the cluster (again to leave at once)",
                    signal.Signals(signum).name)
                break
            async with trio.open_nursery() as leaving:
                async def cut_short() -> None:  # a second signal: leave at once
                    async for _signum in signals:
                        leaving.cancel_scope.cancel()

                leaving.start_soon(cut_short)
                await node.drain()
                leaving.cancel_scope.cancel()
            nursery.cancel_scope.cancel()


def add_join_command(subparsers: argparse._SubParsersAction) -> None:
    """`p2pexec join`: run a node in the foreground until Ctrl-C (which leaves gracefully).
    Several nodes can run on one machine with distinct --port and --data-dir."""
    from p2pexec.config import DATA_DIR_ENV, DEFAULT_PORT, PRESETS

    join = subparsers.add_parser("join", help="run a node of a cluster in the foreground")
    join.add_argument("--token", help=f"the cluster token (default: ${TOKEN_ENV}; with "
                                      f"neither, a new cluster is created)")
    join.add_argument("--host", default="0.0.0.0",
                      help="address to listen on (default 0.0.0.0: every interface)")
    join.add_argument("--port", type=int, default=DEFAULT_PORT,
                      help=f"TCP and UDP port (default {DEFAULT_PORT}; 0 picks a free one)")
    join.add_argument("--advertise", default=None, metavar="HOST",
                      help="address other nodes reach this one at (default: --host, or this "
                           "machine's first non-loopback IPv4 address for a wildcard host)")
    join.add_argument("--peer", action="append", default=[], metavar="HOST:PORT",
                      help="a node to contact at start (repeatable); mDNS finds LAN peers")
    join.add_argument("--no-mdns", action="store_true",
                      help="do not advertise or browse with mDNS (use --peer)")
    join.add_argument("--cpus", type=float, default=None,
                      help="CPUs offered to tasks (default: all)")
    join.add_argument("--gpus", type=int, default=None, metavar="N",
                      help="GPUs offered to tasks, as indices 0..N-1 in their "
                           "CUDA_VISIBLE_DEVICES (default: those `nvidia-smi` lists, else 0)")
    join.add_argument("--object-store-memory", type=int, default=None, metavar="BYTES",
                      help="shared memory objects may fill before the least recently used "
                           "spill to <data dir>/spill (default: 30%% of RAM)")
    join.add_argument("--resources", type=_parse_resources, default={},
                      metavar="NAME=AMOUNT,...", help="custom resources, e.g. tpu=1")
    join.add_argument("--name", default=None, help="node name (default: the host name)")
    join.add_argument("--data-dir", type=Path, default=None,
                      help=f"node key and control socket (default: ${DATA_DIR_ENV} or "
                           f"~/.local/share/p2pexec)")
    join.add_argument("--gossip", choices=sorted(PRESETS), default="lan",
                      help="membership and discovery timings: lan (default) or local (nodes "
                           "on one machine: fast failure detection; with a wildcard --host, "
                           "mDNS on 127.0.0.1 only)")
    join.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    join.set_defaults(run=_join)


def _status(args: argparse.Namespace) -> int:
    import json

    from p2pexec.config import control_socket_path, default_data_dir
    from p2pexec.control import ControlError, NodeNotRunning, request

    path = control_socket_path(args.data_dir or default_data_dir())
    try:
        status = request(path, "status")
    except (NodeNotRunning, ControlError, OSError) as exc:
        print(f"p2pexec status: {exc}", file=sys.stderr)
        return 1
    if not isinstance(status, dict) or not isinstance(status.get("members"), list):
        print(f"p2pexec status: the node on {path} answered without a member list "
              f"(another p2pexec version?)", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({"members": status["members"]}, indent=2))
    else:
        print(format_members(status["members"]))
    return 0


def format_members(members: list[dict]) -> str:
    """The `p2pexec status` table: one line per member, this node first."""
    def resources(r: dict) -> str:
        return " ".join(f"{k}={v:g}" for k, v in sorted(r.items(), key=lambda kv: kv[0] != "CPU"))

    def heard(seconds: float | None) -> str:
        return "-" if seconds is None else f"{seconds:.1f}s ago"

    def tasks(m: dict) -> tuple[str, str, str]:
        stats = m.get("exec")
        if not stats:  # did not answer: what gossip last said
            return (f"{m['load']['queue_length']}/{m['load']['running_tasks']}", "-", "-")
        return (f"{stats['queued']}/{stats['running']}", str(stats["done"]),
                f"{stats['stolen_in']}/{stats['stolen_out']}")

    def store(m: dict) -> str:
        stats = m.get("exec")
        if not stats:
            return "-"
        spilled = f" +{stats['spilled']} spilled" if stats["spilled"] else ""
        return f"{stats['store_bytes'] / 2**20:.1f} MiB{spilled}"

    header = ("NAME", "ID", "ADDRESS", "STATE", "RESOURCES", "QUEUED/RUNNING", "DONE",
              "STOLEN IN/OUT", "STORE", "LAST HEARD")
    rows = [header] + [(m["name"], m["short_id"], m["address"] or "-", m["state"],
                        resources(m["resources"]), *tasks(m), store(m),
                        heard(m["last_heard"])) for m in members]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
                     for row in rows)


def add_status_command(subparsers: argparse._SubParsersAction) -> None:
    """`p2pexec status`: the members the local node knows, read through its control socket."""
    status = subparsers.add_parser("status", help="show the members of the local node's cluster")
    status.add_argument("--data-dir", type=Path, default=None,
                        help="data dir of the node to ask (default: as `p2pexec join`)")
    status.add_argument("--json", action="store_true",
                        help='print {"members": [{"name", "id", "address", "state", ...}]}')
    status.set_defaults(run=_status)


def add_simulate_command(subparsers: argparse._SubParsersAction) -> None:
    """`p2pexec simulate SCENARIO ...`: the seeded fault-injection scenarios of
    `simulations` (the same as `python -m simulations`; `--list` names them)."""
    subparsers.add_parser("simulate", add_help=False,
                          help="run a fault-injection simulation (p2pexec simulate --help)")


def _simulate(argv: list[str]) -> int:
    from simulations.cli import main as simulate

    return simulate(argv)


def build_parser() -> argparse.ArgumentParser:
    """The whole command line: one `add_*_command` per subcommand."""
    parser = argparse.ArgumentParser(prog="p2pexec",
                                     description="Peer-to-peer distributed execution.")
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_token_command(subparsers)
    add_demo_command(subparsers)
    add_join_command(subparsers)
    add_status_command(subparsers)
    add_simulate_command(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; usage errors print one line and return 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["simulate"]:
        return _simulate(argv[1:])  # its options are its own (simulations.cli)
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except LocalUsageError as exc:
        print(f"p2pexec: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
