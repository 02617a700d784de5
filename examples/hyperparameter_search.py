"""Hyperparameter search with nested simulations: tune a controller's two gains.

A PD controller pushes a mass back to rest, `u = -kp * x - kd * v`, with a force limit.
Which gains (kp, kd) settle it fastest when the mass is only known to lie between 0.5
and 2? Random search: each of `--trials` configurations is a trial task that fans out
`--sims` simulation tasks, each a numpy Monte Carlo of `--envs` plants with random
masses and starting states, and scores the gains by the mean time the slowest plant of
a simulation takes to settle (lower is better).

A trial keeps `--window` simulations in flight, so all trials move forward together; a
simulation runs until its plants settle, so a poor configuration (one that rings or
crawls) simulates longer and its trial straggles, as does a trial that started late.
The driver takes trials as they finish with `px.wait`, shows a progress bar, and once a
quorum of them (`--quorum`, default 3/4) has reported, cancels the rest with
`px.cancel`, which also cancels the simulations they started: it does not wait for slow
workers (the price: a good configuration whose trial straggled is missed; `--quorum 1`
waits for all). It then prints the best configuration and exits with status 1 if its
mean settling time is not below `--target` seconds.

Run it embedded (one node in this process), or on a running cluster:

    python examples/hyperparameter_search.py                      # embedded
    python examples/hyperparameter_search.py --address /tmp/n1    # a `p2pexec join`'s data dir
    python examples/hyperparameter_search.py --trials 16 --sims 8 --envs 256   # small

`--address` goes straight to `px.init(address=...)`: for p2pexec a node's data dir
("auto" for the node of $P2PEXEC_DATA_DIR); for Ray (swap the import line for
`import ray as px`) a cluster address such as 127.0.0.1:6379. Without it, `px.init()`
attaches to the node running on this machine, if any, and otherwise starts one.

Failures: tasks run at least once. A trial or simulation whose machine dies runs again
elsewhere (`max_retries`, 3 by default); every simulation is seeded from the search's
seed, the trial and its own index, so a re-run returns the same number. Given `--seed`,
the configurations and their scores are the same on every run; which trials straggle
depends on timing.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time

import numpy as np

import p2pexec as px


@px.remote
def simulate(kp: float, kd: float, seed: int, envs: int, horizon: float,
             dt: float = 0.005, tolerance: float = 0.01, force_limit: float = 10.0) -> float:
    """Seconds until all `envs` plants (random masses and starting states) are within
    `tolerance` of rest under the gains (kp, kd); `horizon` if some never get there."""
    rng = np.random.default_rng(seed)
    mass = rng.uniform(0.5, 2.0, envs)
    x = rng.normal(0.0, 1.0, envs)
    v = rng.normal(0.0, 1.0, envs)
    steps = int(horizon / dt)
    for step in range(steps):
        force = np.clip(-kp * x - kd * v, -force_limit, force_limit)
        v = v + dt * force / mass
        x = x + dt * v
        if step % 10 == 9 and max(np.abs(x).max(), np.abs(v).max()) < tolerance:
            return (step + 1) * dt
    return horizon


@px.remote
def trial(index: int, kp: float, kd: float, sims: int, window: int, envs: int,
          horizon: float, seed: int) -> float:
    """Score of one configuration: the mean settling time of `sims` simulations, run as
    tasks of their own (nested parallelism), `window` at a time: every trial then moves
    forward together, and the cheap ones finish first."""
    first = (seed * 1_000 + index) * 1_000
    running: list = []
    times: list[float] = []
    for i in range(sims):
        if len(running) == window:
            done, running = px.wait(running, num_returns=1)
            times += px.get(done)
        running.append(simulate.remote(kp, kd, first + i, envs, horizon))
    times += px.get(running)
    return float(np.mean(sorted(times)))  # sorted: the same sum whatever order they came


def configurations(trials: int, seed: int) -> list[dict[str, float]]:
    """Random search: gains drawn log-uniformly, kp in [1, 100] and kd in [0.5, 30]."""
    rng = np.random.default_rng(seed)
    kp = np.exp(rng.uniform(math.log(1.0), math.log(100.0), trials))
    kd = np.exp(rng.uniform(math.log(0.5), math.log(30.0), trials))
    return [{"kp": round(float(p), 3), "kd": round(float(d), 3)}
            for p, d in zip(kp, kd, strict=True)]


def progress(done: int, total: int, news: str, started: float, final: bool = False) -> None:
    """One progress bar line: redrawn in place on a terminal, one line each otherwise."""
    width = 24
    filled = width * done // total
    line = (f"[{'#' * filled}{'.' * (width - filled)}] {done:3d}/{total} trials  {news}  "
            f"{time.perf_counter() - started:5.1f} s")
    if sys.stdout.isatty():
        print("\r" + line, end="\n" if final else "", flush=True)
    else:
        print(line, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", help="cluster to attach to (passed to px.init)")
    parser.add_argument("--trials", type=int, default=32, help="configurations tried")
    parser.add_argument("--sims", type=int, default=16, help="simulation tasks per trial")
    parser.add_argument("--window", type=int, default=4,
                        help="simulations a trial keeps in flight")
    parser.add_argument("--envs", type=int, default=1024, help="plants per simulation")
    parser.add_argument("--horizon", type=float, default=20.0,
                        help="simulated seconds before a simulation gives up")
    parser.add_argument("--quorum", type=float, default=0.75,
                        help="fraction of trials to wait for before cancelling the rest")
    parser.add_argument("--target", type=float, default=5.0,
                        help="fail unless the best mean settling time is below this (s)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    started = time.perf_counter()
    px.init(address=args.address)
    connected = time.perf_counter()
    configs = configurations(args.trials, args.seed)
    pending = {trial.remote(i, c["kp"], c["kd"], args.sims, args.window, args.envs,
                            args.horizon, args.seed): i for i, c in enumerate(configs)}
    quorum = max(1, math.ceil(args.quorum * args.trials))
    print(f"searching {args.trials} configurations x {args.sims} simulations of "
          f"{args.envs} plants; stopping the stragglers after {quorum}", flush=True)
    scores: dict[int, float] = {}
    progress(0, args.trials, "-", started)
    while len(scores) < quorum:
        [ready], _ = px.wait(list(pending), num_returns=1)
        index = pending.pop(ready)
        scores[index] = px.get(ready)
        best = min(scores, key=lambda i: (scores[i], i))
        news = (f"trial {index:3d}: {scores[index]:5.2f} s, "
                f"best trial {best:3d}: {scores[best]:5.2f} s")
        progress(len(scores), args.trials, news, started, final=len(scores) == quorum)
    for ref in pending:  # the stragglers, and the simulations they started
        px.cancel(ref)

    ranking = sorted(scores, key=lambda i: (scores[i], i))
    print(f"cancelled {len(pending)} straggling trials; the best of {len(scores)}:")
    for place, index in enumerate(ranking[:3], 1):
        print(f"  {place}. trial {index:3d}  kp={configs[index]['kp']:8.3f}  "
              f"kd={configs[index]['kd']:7.3f}  settles in {scores[index]:.3f} s")
    best = ranking[0]
    ok = scores[best] < args.target
    print(f"best: {json.dumps({'trial': best, **configs[best], 'score': scores[best]})}")
    print(f"{'OK' if ok else 'FAILED'}: best settling time {scores[best]:.3f} s "
          f"{'<' if ok else '>='} target {args.target} s; "
          f"{time.perf_counter() - started:.2f} s in all, "
          f"{connected - started:.2f} s of it in px.init", flush=True)
    px.shutdown()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
