"""Figures of the Kademlia layer: lookup hops and latency by cluster size, record survival.

    python simulations/dht_figures.py                  # n = 50, 200, 1,000, 10,000 (~3 min)
    python simulations/dht_figures.py --quick          # n = 50 and 200 only
    python simulations/dht_figures.py --sizes 50 1000  # chosen sizes
    python simulations/dht_figures.py --csv out/       # also dht_lookups.csv, dht_survival.csv

Engine: `p2pexec.dht.stepper.DhtStepper`, a seeded discrete-event loop over the real
sans-IO `Dht` cores (real Ed25519 keys, signatures and checks; no trio, no sockets);
one-way latency 0.5-1 ms, no loss. Each node starts knowing `--view` random others (a
partial view, as gossip gives a node that just joined) and joins with a lookup of its
own id; the joins run until one simulated second passes without a message.

Lookups, per cluster size n (`DhtConfig()` defaults: k = 20, alpha = 3):
- publish `--records` records, each from a random node;
- run `--lookups` find_value lookups one at a time, each from a random node for a random
  published key, the node drawn among those not holding the key already (a node that
  holds it answers from its own store in 0 hops; "local" is how often a uniformly
  random node would have, for comparison);
- hops: sequential rounds of queries of the lookup; latency: simulated time from its
  start to its end; messages: requests delivered meanwhile; success: it returned the
  published value. Beside them, log2(n) and the mean routing-table size.

Survival, at `--survival-size` nodes, with republish_interval 30 s and record_ttl 90 s:
publish `--records` records from as many distinct nodes, crash 10 %, 25 % or 50 % of the
nodes at once (a fresh cluster each), then look every record up from a live node that
does not hold it: once the deaths are detected (detect_after 2 s, plus 1 s for the
hand-over stores), before any republish, so hand-over alone; and again after one
republish. Records of crashed publishers must be gone (their objects and actors died
with them): "dead found" counts those a lookup still returned, "dead copies" the copies
any live node still holds, both 0 when that rule holds. "replicas" is the mean number of
live nodes holding each live publisher's record (k = 20 before the crash), and in
brackets how many of those are among the k live nodes closest to its key (where lookups
and the republish go): a hand-over is sent by the node now closest to the key, from its
own partial view, so some of its copies land outside the true k closest; they stay
there until their TTL runs out, which is why replicas can pass k after a republish.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import gc
import hashlib
import heapq
import math
import random
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from p2pexec.dht.config import DhtConfig
from p2pexec.dht.routing import distance
from p2pexec.dht.stepper import DhtStepper

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from _common import percentile, render_table

SIZES = (50, 200, 1_000, 10_000)
QUICK_SIZES = (50, 200)
FRACTIONS = (0.10, 0.25, 0.50)
VIEW = 20
RECORDS = 50
LOOKUPS = 200
SURVIVAL_SIZE = 200
SURVIVAL_CONFIG = DhtConfig(republish_interval=30.0, record_ttl=90.0)
DETECT_AFTER = 2.0
HANDOVER_GRACE = 1.0
"""Seconds after detection before the hand-over figure: its stores take milliseconds."""


@dataclass
class LookupRow:
    n: int
    log2_n: float
    table: float
    """Mean routing-table size per node after the joins."""
    replicas: float
    """Mean replicas a publish reached (k = 20 wanted)."""
    local: float
    lookups: int
    hops_mean: float
    hops_p95: float
    hops_max: int
    latency_mean_ms: float
    latency_p95_ms: float
    messages: float
    success: float
    setup_s: float
    """Wall seconds to build the cores and run the joins."""
    wall_s: float
    digest: str


@dataclass
class SurvivalRow:
    n: int
    fraction: float
    crashed: int
    live_records: int
    dead_records: int
    replicas_crash: float
    """Mean live replicas of live publishers' records right after the crash."""
    closest_crash: float
    """Of those, on the k live nodes closest to the key (where lookups and republish go)."""
    replicas_handover: float
    closest_handover: float
    resolved_handover: float
    replicas_republish: float
    closest_republish: float
    resolved_republish: float
    dead_found: int
    dead_copies: int
    wall_s: float
    digest: str


def record_key(seed: int, index: int) -> bytes:
    return hashlib.sha256(b"dht figures %d record %d" % (seed, index)).digest()


def settle(stepper: DhtStepper, limit: float = 60.0) -> None:
    """Run until one simulated second passes without a message (the joins are done)."""
    start = stepper.now
    while stepper.now - start < limit:
        before = stepper.messages
        stepper.run_for(1.0)
        if stepper.messages == before:
            return
    raise RuntimeError(f"{len(stepper.nodes)} nodes still talking after {limit} s")


def holders(stepper: DhtStepper, key: bytes, publisher: int) -> list[int]:
    """Live nodes whose store holds publisher's live record under key."""
    node_id = stepper.nodes[publisher].contact.node
    return [node.index for node in stepper.live()
            if any(r.publisher == node_id for r in node.core.store.get(key, stepper.now))]


def pick_asker(stepper: DhtStepper, rng: random.Random, key: bytes) -> int:
    """A random live node that does not hold anything under key itself (any live node
    when all do)."""
    live = stepper.live()
    for _ in range(100):  # most nodes hold nothing under a given key
        node = rng.choice(live)
        if not node.core.store.get(key, stepper.now):
            return node.index
    others = [node for node in live if not node.core.store.get(key, stepper.now)]
    return rng.choice(others or live).index


def lookup_experiment(n: int, seed: int, records: int = RECORDS, lookups: int = LOOKUPS,
                      view: int = VIEW) -> LookupRow:
    t0 = time.perf_counter()
    stepper = DhtStepper(n, seed=seed, view=view)
    settle(stepper)
    setup = time.perf_counter() - t0
    rng = random.Random(f"lookups {seed} {n}")
    table = statistics.mean(len(node.core.table) for node in stepper.nodes)

    published: list[tuple[bytes, bytes]] = []
    stored = []
    for r in range(records):
        key, value = record_key(seed, r), b"value %d" % r
        index = rng.randrange(n)
        done = stepper.wait(index, stepper.publish(index, key, value))
        if done.error is not None:
            raise RuntimeError(f"publish {r} from node {index} failed: {done.error}")
        stored.append(done.stored)
        published.append((key, value))
    local = statistics.mean(
        sum(1 for node in stepper.nodes if node.core.store.get(key, stepper.now)) / n
        for key, _ in published)

    hops, latency, messages, ok = [], [], [], 0
    for _ in range(lookups):
        key, value = rng.choice(published)
        asker = pick_asker(stepper, rng, key)
        started, sent = stepper.now, stepper.messages
        done = stepper.wait(asker, stepper.find_value(asker, key))
        latency.append(stepper.now - started)
        messages.append(stepper.messages - sent)
        hops.append(done.result.hops)
        ok += done.error is None and [r.value for r in done.result.records] == [value]
    return LookupRow(
        n=n, log2_n=math.log2(n), table=table, replicas=statistics.mean(stored),
        local=local, lookups=lookups, hops_mean=statistics.mean(hops),
        hops_p95=percentile(hops, 0.95), hops_max=max(hops),
        latency_mean_ms=1000 * statistics.mean(latency),
        latency_p95_ms=1000 * percentile(latency, 0.95),
        messages=statistics.mean(messages), success=ok / lookups, setup_s=setup,
        wall_s=time.perf_counter() - t0, digest=stepper.digest)


def resolves(stepper: DhtStepper, rng: random.Random, key: bytes, publisher: int) -> bool:
    """Whether a lookup from a live node (one not holding the key) returns publisher's
    record under key."""
    asker = pick_asker(stepper, rng, key)
    done = stepper.wait(asker, stepper.find_value(asker, key))
    node_id = stepper.nodes[publisher].contact.node
    return any(r.publisher == node_id for r in done.result.records)


def survival_experiment(n: int, fraction: float, seed: int, records: int = RECORDS,
                        view: int = VIEW) -> SurvivalRow:
    t0 = time.perf_counter()
    config = SURVIVAL_CONFIG
    stepper = DhtStepper(n, config, seed=seed, view=view, detect_after=DETECT_AFTER)
    settle(stepper)
    rng = random.Random(f"survival {seed} {n} {fraction}")
    publishers = rng.sample(range(n), min(records, n))
    for r, index in enumerate(publishers):
        done = stepper.wait(index, stepper.publish(index, record_key(seed, r), b"v %d" % r))
        if done.error is not None:
            raise RuntimeError(f"publish {r} from node {index} failed: {done.error}")
    crashed = set(rng.sample(range(n), round(fraction * n)))
    crash_time = stepper.now
    for index in sorted(crashed):
        stepper.crash(index)
    live = [(record_key(seed, r), p) for r, p in enumerate(publishers) if p not in crashed]
    dead = [(record_key(seed, r), p) for r, p in enumerate(publishers) if p in crashed]

    def replicas() -> tuple[float, float]:
        """Mean live holders of each live publisher's record, and how many of them are
        among the k live nodes closest to its key."""
        if not live:
            return math.nan, math.nan
        alive = stepper.live()
        held, closest = [], []
        for key, p in live:
            where = set(holders(stepper, key, p))
            nearest = heapq.nsmallest(config.k, alive, key=lambda node: distance(
                node.contact.node.raw, key))
            held.append(len(where))
            closest.append(sum(node.index in where for node in nearest))
        return statistics.mean(held), statistics.mean(closest)

    def resolved() -> float:
        return sum(resolves(stepper, rng, key, p) for key, p in live) / len(live) if live \
            else math.nan

    replicas_crash, closest_crash = replicas()
    # Every core was made at time 0, so all republish at multiples of the interval.
    first_republish = config.republish_interval * (crash_time // config.republish_interval
                                                   + 1)
    stepper.run_until(crash_time + DETECT_AFTER + HANDOVER_GRACE)
    (replicas_handover, closest_handover), resolved_handover = replicas(), resolved()
    if stepper.now >= first_republish:
        raise RuntimeError("the hand-over figure must be taken before the first republish")
    stepper.run_until(first_republish + 5.0)
    (replicas_republish, closest_republish), resolved_republish = replicas(), resolved()
    dead_found = sum(resolves(stepper, rng, key, p) for key, p in dead)
    dead_ids = {stepper.nodes[p].contact.node for _, p in dead}
    dead_copies = sum(1 for node in stepper.live() for held in node.core.store.by_key.values()
                      for publisher in held if publisher in dead_ids)
    return SurvivalRow(
        n=n, fraction=fraction, crashed=len(crashed), live_records=len(live),
        dead_records=len(dead), replicas_crash=replicas_crash, closest_crash=closest_crash,
        replicas_handover=replicas_handover, closest_handover=closest_handover,
        resolved_handover=resolved_handover, replicas_republish=replicas_republish,
        closest_republish=closest_republish, resolved_republish=resolved_republish,
        dead_found=dead_found, dead_copies=dead_copies, wall_s=time.perf_counter() - t0,
        digest=stepper.digest)


def lookup_table(rows: list[LookupRow]) -> str:
    header = ["n", "log2 n", "table", "replicas", "local", "hops mean", "hops p95",
              "hops max", "latency mean ms", "latency p95 ms", "msgs/lookup", "success",
              "setup s", "wall s"]
    return render_table(header, [[
        f"{r.n:,}", f"{r.log2_n:.1f}", f"{r.table:.1f}", f"{r.replicas:.1f}",
        f"{r.local:.1%}", f"{r.hops_mean:.2f}", f"{r.hops_p95}", f"{r.hops_max}",
        f"{r.latency_mean_ms:.2f}", f"{r.latency_p95_ms:.2f}", f"{r.messages:.1f}",
        f"{r.success:.1%}", f"{r.setup_s:.1f}", f"{r.wall_s:.1f}"] for r in rows])


def survival_table(rows: list[SurvivalRow]) -> str:
    header = ["n", "crashed", "live recs", "dead recs", "replicas at crash",
              "replicas hand-over", "resolved hand-over", "replicas republish",
              "resolved republish", "dead found", "dead copies", "wall s"]
    return render_table(header, [[
        f"{r.n:,}", f"{r.fraction:.0%} ({r.crashed})", f"{r.live_records}",
        f"{r.dead_records}", f"{r.replicas_crash:.1f} ({r.closest_crash:.1f})",
        f"{r.replicas_handover:.1f} ({r.closest_handover:.1f})",
        f"{r.resolved_handover:.1%}",
        f"{r.replicas_republish:.1f} ({r.closest_republish:.1f})",
        f"{r.resolved_republish:.1%}", f"{r.dead_found}", f"{r.dead_copies}",
        f"{r.wall_s:.1f}"] for r in rows])


def write_csv(path: Path, rows: list) -> None:
    with path.open("w", newline="") as out:
        writer = csv.DictWriter(out, [f.name for f in dataclasses.fields(rows[0])])
        writer.writeheader()
        writer.writerows(dataclasses.asdict(row) for row in rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=None,
                        help=f"cluster sizes of the lookup figures (default {SIZES})")
    parser.add_argument("--quick", action="store_true", help=f"only n = {QUICK_SIZES}")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--records", type=int, default=RECORDS)
    parser.add_argument("--lookups", type=int, default=LOOKUPS)
    parser.add_argument("--view", type=int, default=VIEW,
                        help="others each node starts knowing")
    parser.add_argument("--survival-size", type=int, default=SURVIVAL_SIZE,
                        help="nodes of the survival figures (0: skip them)")
    parser.add_argument("--csv", type=Path, metavar="DIR",
                        help="also write dht_lookups.csv and dht_survival.csv there")
    args = parser.parse_args(argv)
    sizes = args.sizes or (QUICK_SIZES if args.quick else SIZES)
    # millions of small objects stay alive while 10,000 nodes join at once: with the
    # default thresholds the collector rescans them again and again (a third of the run)
    gc.set_threshold(200_000, 50, 100)
    started = time.perf_counter()
    print("engine: p2pexec.dht.stepper (sans-IO Dht cores, seeded discrete-event loop, "
          f"real Ed25519), seed {args.seed}, view {args.view}, latency 0.5-1 ms, no loss")
    print(f"lookups: DhtConfig() (k 20, alpha 3), {args.records} records from random "
          f"nodes, {args.lookups} find_value lookups one at a time\n", flush=True)
    lookups = []
    for n in sizes:
        lookups.append(lookup_experiment(n, args.seed, args.records, args.lookups,
                                         args.view))
        print(f"  n={n:,} done in {lookups[-1].wall_s:.1f} s", file=sys.stderr, flush=True)
    print(lookup_table(lookups), flush=True)

    survival = []
    if args.survival_size:
        for fraction in FRACTIONS:
            survival.append(survival_experiment(args.survival_size, fraction, args.seed,
                                                args.records, args.view))
        print(f"\nsurvival: republish_interval {SURVIVAL_CONFIG.republish_interval:.0f} s, "
              f"record_ttl {SURVIVAL_CONFIG.record_ttl:.0f} s, detect_after "
              f"{DETECT_AFTER:.0f} s; {args.records} records from distinct nodes; "
              f"hand-over figures at crash + {DETECT_AFTER + HANDOVER_GRACE:.0f} s, "
              "republish figures 5 s after the first republish")
        print(survival_table(survival))

    if args.csv is not None:
        args.csv.mkdir(parents=True, exist_ok=True)
        write_csv(args.csv / "dht_lookups.csv", lookups)
        if survival:
            write_csv(args.csv / "dht_survival.csv", survival)
        print(f"\nCSV written to {args.csv}/")
    print("\ntrace digests:")
    for r in lookups:
        print(f"  lookups  n={r.n:<6} {r.digest}")
    for s in survival:
        print(f"  survival n={s.n:<6} crash {s.fraction:.0%}: {s.digest}")
    print(f"\ntotal wall time {time.perf_counter() - started:.1f} s")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
