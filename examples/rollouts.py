"""Rollouts with a dynamic task graph: evolution strategies on a numpy cart-pole.

`--actors` environment actors each simulate `--episodes` cart-poles at once (the
classic control problem: push a cart left or right to keep a pole upright, one point
per step it stays up, at most `--horizon`). The policy is linear: push right when
`weights . observation + bias > 0`.

The driver improves it by evolution strategies. It keeps one rollout in flight per
actor, each scoring a random perturbation of the current policy in both directions
(`policy +/- sigma * noise`). As rollouts complete it takes them in batches with
`px.wait(num_returns=--batch)`, moves the policy toward the perturbations that scored
better, and gives each actor that finished a new rollout of the updated policy: which
actor runs what, and with which policy, is decided at run time by the order results
come back. Rollouts scored against a policy more than `--max-staleness` updates old
are dropped. When a batch's mean score reaches `--target`, the driver starts evaluation
rollouts of the unperturbed policy on every actor; if they average at least `--target`
it stops, else training goes on. It exits with status 1 if no policy passes within
`--max-updates` updates.

Run it embedded (one node in this process), or on a running cluster:

    python examples/rollouts.py                                 # embedded
    python examples/rollouts.py --address /tmp/n1               # a `p2pexec join`'s data dir
    python examples/rollouts.py --actors 4 --batch 2 --episodes 8 --horizon 200 \\
        --target 190                                            # small

`--address` goes straight to `px.init(address=...)`: for p2pexec a node's data dir
("auto" for the node of $P2PEXEC_DATA_DIR); for Ray (swap the import line for
`import ray as px`) a cluster address such as 127.0.0.1:6379. Without it, `px.init()`
attaches to the node running on this machine, if any, and otherwise starts one.

Failures: the environment actors are declared with `max_restarts=-1` and
`max_task_retries=-1`: one whose process or machine dies is rebuilt by its constructor
and the rollout it was running runs again there. An actor's state is only its
simulator (rebuilt by `__init__`); each rollout carries its own seed, so a rollout run
twice scores the same. The policy lives in the driver. The random draws are seeded
(`--seed`), but which rollouts land in which batch depends on timing, so runs differ in
their path while each checks the same result.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

import p2pexec as px


@px.remote(max_restarts=-1, max_task_retries=-1, scheduling_strategy="SPREAD")
class CartPoles:
    """`episodes` cart-poles simulated together (the dynamics of Barto, Sutton and
    Anderson 1983, as in Gym's CartPole: 0.02 s steps, a pole falls past 12 degrees, the
    cart leaves the track past 2.4 m)."""

    GRAVITY, CART_MASS, POLE_MASS, POLE_HALF_LENGTH, FORCE, TAU = 9.8, 1.0, 0.1, 0.5, 10.0, 0.02

    def __init__(self, episodes: int, horizon: int) -> None:
        self.episodes = episodes
        self.horizon = horizon

    def score(self, policy: np.ndarray, seed: int) -> float:
        """Mean points per episode of `policy` (4 weights and a bias) from random starts."""
        rng = np.random.default_rng(seed)
        state = rng.uniform(-0.05, 0.05, (self.episodes, 4))
        alive = np.ones(self.episodes, dtype=bool)
        points = np.zeros(self.episodes)
        total_mass = self.CART_MASS + self.POLE_MASS
        pole_moment = self.POLE_MASS * self.POLE_HALF_LENGTH
        for _ in range(self.horizon):
            force = np.where(state @ policy[:4] + policy[4] > 0, self.FORCE, -self.FORCE)
            x, x_dot, theta, theta_dot = state.T
            cos, sin = np.cos(theta), np.sin(theta)
            temp = (force + pole_moment * theta_dot**2 * sin) / total_mass
            theta_acc = (self.GRAVITY * sin - cos * temp) / (
                self.POLE_HALF_LENGTH * (4 / 3 - self.POLE_MASS * cos**2 / total_mass))
            x_acc = temp - pole_moment * theta_acc * cos / total_mass
            state = np.stack([x + self.TAU * x_dot, x_dot + self.TAU * x_acc,
                              theta + self.TAU * theta_dot, theta_dot + self.TAU * theta_acc],
                             axis=1)
            points += alive
            alive &= (np.abs(state[:, 0]) <= 2.4) & (np.abs(state[:, 2]) <= 0.2095)
            if not alive.any():
                break
        return float(points.mean())

    def rollout(self, policy: np.ndarray, noise: np.ndarray, sigma: float, seed: int
                ) -> tuple[float, float]:
        """Scores of the two mirrored perturbations, on the same starts."""
        return (self.score(policy + sigma * noise, seed),
                self.score(policy - sigma * noise, seed))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", help="cluster to attach to (passed to px.init)")
    parser.add_argument("--actors", type=int, default=8, help="environment actors")
    parser.add_argument("--episodes", type=int, default=32, help="cart-poles per actor")
    parser.add_argument("--horizon", type=int, default=500, help="most steps per episode")
    parser.add_argument("--batch", type=int, default=4,
                        help="rollouts per policy update (px.wait's num_returns)")
    parser.add_argument("--sigma", type=float, default=0.5, help="perturbation size")
    parser.add_argument("--learning-rate", type=float, default=0.3)
    parser.add_argument("--max-staleness", type=int, default=2,
                        help="drop rollouts of a policy this many updates old")
    parser.add_argument("--target", type=float, default=475.0,
                        help="mean points per episode the policy must reach")
    parser.add_argument("--max-updates", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    started = time.perf_counter()
    px.init(address=args.address)
    connected = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    actors = [CartPoles.remote(args.episodes, args.horizon) for _ in range(args.actors)]
    policy = np.zeros(5)
    version = 0  # updates made to the policy so far
    seeds = iter(range(args.seed * 10**9, (args.seed + 1) * 10**9))
    in_flight: dict = {}  # rollout ref -> (actor index, noise, policy version)

    def start_rollout(index: int) -> None:
        noise = rng.normal(size=policy.shape)
        ref = actors[index].rollout.remote(policy, noise, args.sigma, next(seeds))
        in_flight[ref] = (index, noise, version)

    print(f"evolution strategies: {args.actors} actors x {args.episodes} cart-poles, "
          f"updating the policy every {args.batch} rollouts", flush=True)
    for index in range(args.actors):
        start_rollout(index)
    evaluated = None
    rollouts = dropped = evaluations = 0
    while version < args.max_updates:
        ready, _ = px.wait(list(in_flight), num_returns=args.batch)
        batch, idle = [], []
        for ref in ready:
            index, noise, at = in_flight.pop(ref)
            idle.append(index)
            rollouts += 1
            if version - at > args.max_staleness:
                dropped += 1
            else:
                batch.append((noise, *px.get(ref)))
        if batch:  # mirrored sampling with centred ranks: scale-free, robust to outliers
            scores = np.array([[plus, minus] for _, plus, minus in batch])
            ranks = scores.ravel().argsort().argsort().reshape(scores.shape)
            weights = ranks / max(1, scores.size - 1) - 0.5
            step = sum((w_plus - w_minus) * noise
                       for (noise, _, _), (w_plus, w_minus) in zip(batch, weights, strict=True))
            policy = policy + args.learning_rate / (len(batch) * args.sigma) * step
            version += 1
            mean = float(scores.mean())
            if version % 5 == 0 or mean >= args.target:
                print(f"update {version:4d}  batch mean {mean:6.1f}  "
                      f"{time.perf_counter() - started:6.2f} s", flush=True)
            if mean >= args.target:  # promising: evaluate the policy itself, everywhere
                evaluations += 1
                scored = px.get([a.score.remote(policy, next(seeds)) for a in actors])
                evaluated = float(np.mean(scored))
                print(f"evaluation {evaluations}: {evaluated:.1f} points per episode over "
                      f"{args.actors * args.episodes} episodes", flush=True)
                if evaluated >= args.target:
                    break
        for index in idle:  # the actors that finished get a rollout of the new policy
            start_rollout(index)

    ok = evaluated is not None and evaluated >= args.target
    print(f"{'OK' if ok else 'FAILED'}: policy {np.round(policy, 3).tolist()} scores "
          f"{evaluated if evaluated is not None else float('nan'):.1f} "
          f"{'>=' if ok else '<'} target {args.target} after {version} updates "
          f"({rollouts} rollouts, {dropped} too stale, {evaluations} evaluations); "
          f"{time.perf_counter() - started:.2f} s in all, "
          f"{connected - started:.2f} s of it in px.init", flush=True)
    px.shutdown()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
