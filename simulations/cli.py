"""`p2pexec simulate` and `python -m simulations`: run a scenario, show what happened.

A run prints its progress (simulated time reached) on stderr, then a summary table, and
writes to `--out` (default `sim-out/SCENARIO-nNODES-sSEED/`) the time series as
`series.csv`, the schedule it ran as `schedule.json` and, when matplotlib is installed
(`pip install 'p2pexec[sim]'`), `series.png`. The last line is the verdict: every
invariant checked, and the trace digest. A failing run exits with 1 and prints the
command that reproduces it; `--shrink` first looks for a smaller fault schedule that
still fails and writes it as `shrunk.json` (replay it with `--schedule`).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

from simulations import faults
from simulations.runner import Outcome, run, shrink
from simulations.scenario import ENGINES, Params, Scenario
from simulations.scenarios import SCENARIOS


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="p2pexec simulate",
        description="Run a seeded fault-injection scenario over the real node code.")
    p.add_argument("scenario", nargs="?", help="scenario name (see --list)")
    p.add_argument("--list", action="store_true", help="describe every scenario")
    p.add_argument("--nodes", type=int, help="cluster size (default: the scenario's)")
    p.add_argument("--seed", type=int, default=1, help="seed of every random choice")
    p.add_argument("--duration", type=float, help="simulated seconds after convergence")
    p.add_argument("--loss", type=float, help="datagram loss on every link, 0 to 1")
    p.add_argument("--latency", type=float, metavar="MS", help="one-way latency in ms")
    p.add_argument("--fp-budget", type=int, metavar="N",
                   help="live members the run may declare failed (default: none on clean "
                        "links, 10 per node-hour per unit of loss)")
    p.add_argument("--engine", choices=("auto", *ENGINES), default="auto",
                   help="simnet: whole nodes on SimNetwork (up to a few hundred); "
                        "stepper: the sans-IO cores, up to 10,000 (auto: by size)")
    p.add_argument("--out", type=Path, help="directory for series.csv, schedule.json and "
                                            "plots (default sim-out/SCENARIO-nN-sSEED)")
    p.add_argument("--schedule", type=Path, help="replay this schedule (JSON) instead of "
                                                 "the scenario's own")
    p.add_argument("--shrink", action="store_true",
                   help="on failure, reduce the fault schedule to a smaller failing one")
    p.add_argument("--quiet", action="store_true", help="no progress line")
    p.add_argument("--log", action="store_true",
                   help="show the nodes' warnings (simnet runs many nodes in this process)")
    return p


def params_for(scenario: Scenario, args: argparse.Namespace) -> Params:
    nodes = args.nodes if args.nodes is not None else scenario.nodes
    if nodes < scenario.min_nodes:
        raise SystemExit(f"p2pexec simulate: {scenario.name} needs at least "
                         f"{scenario.min_nodes} nodes")
    engine = scenario.default_engine(nodes) if args.engine == "auto" else args.engine
    if engine not in scenario.engines:
        raise SystemExit(f"p2pexec simulate: {scenario.name} runs on "
                         f"{' or '.join(scenario.engines)}, not {engine}")
    loss = scenario.loss if args.loss is None else args.loss
    if not 0 <= loss < 1:
        raise SystemExit("p2pexec simulate: --loss is a probability in [0, 1)")
    latency_ms = scenario.latency_ms if args.latency is None else args.latency
    duration = scenario.duration if args.duration is None else args.duration
    if latency_ms < 0 or duration <= 0:
        raise SystemExit("p2pexec simulate: --latency must be >= 0 and --duration > 0")
    if args.fp_budget is not None and args.fp_budget < 0:
        raise SystemExit("p2pexec simulate: --fp-budget must be >= 0")
    return Params(nodes, args.seed, duration, loss, latency_ms / 1000, engine,
                  args.fp_budget)


def command(scenario: Scenario, params: Params, schedule: Path | None = None) -> str:
    """The shortest command that runs `params` again: only what differs from the
    scenario's defaults."""
    words = ["p2pexec", "simulate", scenario.name, "--seed", str(params.seed)]
    if params.nodes != scenario.nodes:
        words += ["--nodes", str(params.nodes)]
    if params.duration != scenario.duration:
        words += ["--duration", f"{params.duration:g}"]
    if params.loss != scenario.loss:
        words += ["--loss", f"{params.loss:g}"]
    if params.latency * 1000 != scenario.latency_ms:
        words += ["--latency", f"{params.latency * 1000:g}"]
    if params.engine != scenario.default_engine(params.nodes):
        words += ["--engine", params.engine]
    if params.false_positive_budget is not None:
        words += ["--fp-budget", str(params.false_positive_budget)]
    if schedule is not None:
        words += ["--schedule", str(schedule)]
    return " ".join(words)


def describe(outcome: Outcome) -> str:
    """The summary table."""
    p = outcome.params
    speed = p.duration / outcome.real_seconds if outcome.real_seconds else float("inf")
    rows = [("scenario", f"{outcome.scenario.name} on {p.engine}"),
            ("nodes", str(p.nodes)),
            ("seed", str(p.seed)),
            ("links", f"{p.loss:.0%} loss, {p.latency * 1000:g} ms one way"),
            ("simulated s", f"{p.duration:g}"),
            ("real s", f"{outcome.real_seconds:.1f}"),
            ("speed", f"{speed:.1f}x real time"),
            ("messages delivered", str(outcome.messages)),
            ("messages per real s", f"{outcome.messages / max(outcome.real_seconds, 1e-9):,.0f}"),
            ("events in schedule", str(len(outcome.schedule)))]
    rows += list(outcome.recorder.summary().items())
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"  {name:<{width}}  {value}" for name, value in rows)


def verdict(outcome: Outcome) -> str:
    checks = "; ".join(f"{c.name} {'ok' if c.ok else 'FAILED'} ({c.detail})"
                       for c in outcome.checks)
    trace = f"trace {outcome.digest}" if outcome.exact_replay else \
        f"event digest {outcome.digest} (simnet: not replay-exact)"
    return f"{'PASS' if outcome.ok else 'FAIL'}: {checks} · {trace}"


def write_series(outcome: Outcome, out: Path) -> list[Path]:
    """series.csv, schedule.json and (with matplotlib) series.png; the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    series = outcome.recorder.series
    columns = list(dict.fromkeys(key for row in series for key in row))
    csv_path = out / "series.csv"
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows(series)
    schedule_path = out / "schedule.json"
    schedule_path.write_text(faults.to_json(outcome.schedule))
    written = [csv_path, schedule_path]
    plot = plot_series(outcome, out / "series.png")
    if plot is not None:
        written.append(plot)
    return written


def plot_series(outcome: Outcome, path: Path) -> Path | None:
    """Live nodes, mean view error and failures declared over time; None without
    matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    series = outcome.recorder.series
    t = [row["t"] for row in series]
    fig, axes = plt.subplots(3, 1, sharex=True, figsize=(8, 7))
    axes[0].plot(t, [row["up"] for row in series], drawstyle="steps-post")
    axes[0].set_ylabel("nodes up")
    axes[1].plot(t, [row["view_error_mean"] for row in series])
    axes[1].set_ylabel("mean view error\n(members)")
    axes[2].plot(t, [row["failed_declared"] for row in series], label="failed verdicts")
    axes[2].plot(t, [row["false_positives"] for row in series], label="false positives")
    axes[2].set_ylabel("cumulative")
    axes[2].legend(loc="upper left")
    axes[2].set_xlabel("simulated seconds")
    for event in outcome.schedule:
        if event.is_fault:
            for ax in axes:
                ax.axvline(event.at, color="0.85", linewidth=0.6, zorder=0)
    p = outcome.params
    fig.suptitle(f"{outcome.scenario.name}: {p.nodes} nodes, seed {p.seed}, {p.engine}, "
                 f"{p.loss:.0%} loss")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


@contextlib.contextmanager
def quiet_nodes(show: bool = False) -> Iterator[None]:
    """Simulated nodes log what real ones would (a leave nobody confirmed, a peer
    dropped); a simulation reports through its figures, so only errors show unless
    asked. The level is restored after."""
    logger = logging.getLogger("p2pexec")
    level = logger.level
    logger.setLevel(logging.WARNING if show else logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def list_scenarios() -> str:
    width = max(len(name) for name in SCENARIOS)
    return "\n".join(f"{name:<{width}}  {s.summary} [{s.nodes} nodes, {s.duration:g} s; "
                     f"{', '.join(s.engines)}]" for name, s in SCENARIOS.items())


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.list:
        print(list_scenarios())
        return 0
    if args.scenario is None:
        parser().print_usage(sys.stderr)
        print("p2pexec simulate: name a scenario (--list shows them)", file=sys.stderr)
        return 2
    scenario = SCENARIOS.get(args.scenario)
    if scenario is None:
        print(f"p2pexec simulate: no scenario {args.scenario!r}; there are: "
              f"{', '.join(SCENARIOS)}", file=sys.stderr)
        return 2
    params = params_for(scenario, args)
    with quiet_nodes(args.log):
        return _run(scenario, params, args)


def _run(scenario: Scenario, params: Params, args: argparse.Namespace) -> int:
    """Run, report, write the files; shrink on failure when asked."""
    schedule = None
    if args.schedule is not None:
        try:
            schedule = faults.load(args.schedule)
        except (OSError, ValueError) as exc:
            print(f"p2pexec simulate: cannot read {args.schedule}: {exc}", file=sys.stderr)
            return 2
    out = args.out or Path("sim-out") / f"{scenario.name}-n{params.nodes}-s{params.seed}"
    print(f"{scenario.name}: {scenario.summary}")
    progress = None if args.quiet else sys.stderr
    outcome = run(scenario, params, schedule, progress=progress)
    print(describe(outcome))
    for path in write_series(outcome, out):
        print(f"  wrote {path}")
    if not outcome.ok:
        replay = args.schedule
        if args.shrink:
            smaller = shrink(scenario, params, outcome.schedule, outcome.failed,
                             log=lambda line: print(f"  {line}", file=sys.stderr))
            replay = out / "shrunk.json"
            replay.write_text(faults.to_json(smaller))
            kept = sum(1 for e in smaller if e.is_fault)
            total = sum(1 for e in outcome.schedule if e.is_fault)
            print(f"  shrunk the faults from {total} to {kept}:")
            for event in smaller:
                if event.is_fault:
                    print(f"    {event.describe()}")
        print(f"  reproduce: {command(scenario, params, replay)}")
    print(verdict(outcome))
    return 0 if outcome.ok else 1
