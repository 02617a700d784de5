"""How fast the stepper simulates, by cluster size: set-up, speed converged and under
churn, messages per real second, memory.

    python benchmarks/bench_stepper.py                      # n = 100, 1,000, 10,000 (~5 min)
    python benchmarks/bench_stepper.py --sizes 100 1000     # chosen sizes

Per size: the set-up of a converged cluster (`ClusterStepper.converge`: shared member
table, DHT neighbours) in real seconds; `--quiet` seconds of the converged cluster with
nothing happening (probes, push-pulls, DHT refreshes), as simulated seconds per real
second and deliveries per real second; the `churn` scenario (one membership change per
second at most, a tenth of the nodes per minute) for `--churn` simulated seconds through
the runner (invariants checked too); and the peak resident memory of this process so
far. Targets (issue 10): churn at 1,000 nodes >= 30x real time, at 10,000 >= 2x; set-up
of 10,000 nodes under a minute; memory under 4 GiB.
"""

from __future__ import annotations

import argparse
import resource
import time

from p2pexec.testing.stepper import ClusterStepper
from simulations.runner import run
from simulations.scenario import Params
from simulations.scenarios import SCENARIOS


def peak_mb() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024


def measure(n: int, quiet: float, churn: float) -> list[str]:
    started = time.monotonic()
    sim = ClusterStepper(n, seed=1)
    sim.converge()
    sim.run_for(1.0)
    setup = time.monotonic() - started
    before, started = sim.loop.deliveries, time.monotonic()
    sim.run_for(quiet)
    real = time.monotonic() - started
    delivered = sim.loop.deliveries - before
    del sim
    outcome = run(SCENARIOS["churn"], Params(n, 1, churn, 0.0, 0.0005, "stepper"))
    return [str(n), f"{setup:.1f}", f"{quiet / real:.1f}x", f"{delivered / real:,.0f}",
            f"{churn / outcome.real_seconds:.1f}x",
            f"{outcome.messages / outcome.real_seconds:,.0f}",
            "pass" if outcome.ok else "FAIL", str(peak_mb())]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 10_000])
    parser.add_argument("--quiet", type=float, default=30.0,
                        help="simulated seconds of the converged cluster")
    parser.add_argument("--churn", type=float, default=120.0,
                        help="simulated seconds of the churn scenario")
    args = parser.parse_args(argv)
    header = ["n", "set-up s", "converged speed", "msgs / real s", "churn speed",
              "churn msgs / real s", "invariants", "peak MB"]
    print("  ".join(header))
    for n in args.sizes:
        print("  ".join(measure(n, args.quiet, args.churn)), flush=True)


if __name__ == "__main__":
    main()
