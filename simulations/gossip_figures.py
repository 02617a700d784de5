"""Figures of the membership protocol: failure detection, false positives, join, traffic.

    python simulations/gossip_figures.py            # the full table (~2-4 minutes)
    python simulations/gossip_figures.py --quick    # n = 10 and 50 only
    python simulations/gossip_figures.py --simnet   # plus a cross-check through the trio
                                                    # driver on SimNetwork (50 nodes, 0 %)

Engine: `p2pexec.gossip.stepper.Stepper`, a seeded discrete-event loop over the real
sans-IO `Membership` cores (no trio, no sockets); one-way latency 0.5-1 ms, the given
independent datagram loss on every packet (push-pull streams are reliable, as TCP is).
Config: `GossipConfig.lan()` (memberlist DefaultLANConfig). Per (n, loss):

- bootstrap: n nodes join through one seed at t = 0 (no loss), run until every view is
  complete, then switch loss on;
- quiet period (300 s): gossip bytes per node per second (datagrams + push-pull, as
  encoded on the wire) and false positives (a live member declared failed, counted once
  per observer and subject);
- detection: 6 times, crash a random member and record when each live node declares it
  failed: median and max over all observers of all trials;
- join: one new node joins through one seed; time until every live member sees it alive
  and it sees every live member (alive, or suspect under a passing false suspicion).

Beside them, memberlist's documented LAN figures: probe interval 1 s, suspicion timeout
4 x max(1, log10 n) x 1 s (min, with enough confirmations) up to 6x that (max), and SWIM's
expected first-probe delay of ~1.58 probe intervals.
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
import time
from dataclasses import dataclass

from p2pexec.gossip.config import GossipConfig
from p2pexec.gossip.core import EventKind
from p2pexec.gossip.messages import State
from p2pexec.gossip.stepper import SimNode, Stepper

QUIET = 300.0
TRIALS = 6
VICTIMS = (7, 23, 41, 12, 30, 45)


@dataclass
class Row:
    n: int
    loss: float
    detect_median: float
    detect_max: float
    undetected: int
    false_positives: int
    join: float | None
    bytes_per_node_s: float
    seconds: float


def complete(sim: Stepper, nodes: list[SimNode]) -> bool:
    """Every node in `nodes` sees exactly `nodes` as alive (and nothing else as live)."""
    want = {n.node_id for n in nodes}
    for node in nodes:
        view = node.core.view()
        alive = {k for k, m in view.items() if m.state == State.ALIVE}
        if alive != want:
            return False
    return True


def joined(newcomer: SimNode, live: list[SimNode]) -> bool:
    """Every live member sees the newcomer alive, and it sees each of them alive or
    suspect (under loss some member is always under a passing suspicion)."""
    if any(getattr(node.core.member(newcomer.node_id), "state", None) != State.ALIVE
           for node in live):
        return False
    view = newcomer.core.view()
    return all(node.node_id in view and view[node.node_id].state in
               (State.ALIVE, State.SUSPECT) for node in live)


def run_until(sim: Stepper, cond, limit: float, step: float = 0.25) -> float | None:
    start = sim.now
    while sim.now - start <= limit:
        if cond():
            return sim.now - start
        sim.run_for(step)
    return None


def false_positives(sim: Stepper, crashed: dict[bytes, float]) -> int:
    """FAILED events about members that had not crashed by then (observer, subject once)."""
    pairs = set()
    for node in sim.nodes:
        for e in node.events:
            if e.kind != EventKind.FAILED:
                continue
            died = crashed.get(e.member.node_id.raw)
            if died is None or e.time < died:
                pairs.add((node.index, e.member.node_id.raw))
    return len(pairs)


def experiment(n: int, loss: float, seed: int) -> Row:
    t0 = time.perf_counter()
    cfg = GossipConfig.lan()
    sim = Stepper(n, cfg, seed=seed)
    rng = random.Random(seed)
    sim.join_all()
    if run_until(sim, lambda: complete(sim, sim.nodes), 600.0, step=1.0) is None:
        raise SystemExit(f"bootstrap of {n} nodes did not converge in 600 s")
    sim.loss = loss
    crashed: dict[bytes, float] = {}

    for node in sim.nodes:
        node.bytes_sent = 0
    sim.run_for(QUIET)
    traffic = sum(node.bytes_sent for node in sim.nodes) / (n * QUIET)

    delays: list[float] = []
    undetected = 0
    for _ in range(TRIALS):
        victim = rng.choice([node for node in sim.live_nodes() if node.index != 0])
        crashed[victim.node_id.raw] = sim.now
        start = sim.now
        sim.crash(victim.index)
        sim.run_for(2 * cfg.failure_detection_bound(n))
        for node in sim.live_nodes():
            times = [e.time - start for e in node.events
                     if e.kind == EventKind.FAILED and e.member.node_id == victim.node_id
                     and e.time >= start]
            if times:
                delays.append(min(times))
            else:
                undetected += 1

    live = sim.live_nodes()
    newcomer = sim.add_node()
    sim.join(newcomer.index, [0])
    join = run_until(sim, lambda: joined(newcomer, live), 300.0, step=0.05)

    return Row(n, loss, statistics.median(delays), max(delays), undetected,
               false_positives(sim, crashed), join, traffic, time.perf_counter() - t0)


def simnet_crosscheck() -> str:
    """The 50-node, 0 %-loss detection figure through the trio driver on SimNetwork."""
    import trio
    import trio.testing

    from p2pexec.gossip.core import Membership
    from p2pexec.gossip.driver import GossipDriver
    from p2pexec.testing.simnet import LinkSpec, NodeCrashedError, SimNetwork

    cfg, n = GossipConfig.lan(), 50
    out: list[float] = []

    async def serve(transport, handler, *, task_status=trio.TASK_STATUS_IGNORED):
        try:
            await transport.serve(handler, task_status=task_status)
        except NodeCrashedError:
            pass

    async def main() -> None:
        net = SimNetwork(seed=1, default_link=LinkSpec(latency=0.0005, jitter=0.0005))
        async with trio.open_nursery() as nursery:
            drivers, scopes, events = [], [], []
            for i in range(n):
                tr = net.add_node()
                core = Membership(tr.local.node_id, tr.local.address, cfg, random.Random(i))
                drv = GossipDriver(core, tr)
                evs = drv.subscribe()
                scope = trio.CancelScope()
                got: list = []

                async def node(tr=tr, drv=drv, scope=scope, evs=evs, got=got,
                               *, task_status=trio.TASK_STATUS_IGNORED):
                    with scope:
                        async with trio.open_nursery() as inner:
                            await inner.start(serve, tr, drv.handle_stream)
                            await inner.start(drv.run)
                            task_status.started()
                            async for ev in evs:
                                got.append(ev)

                await nursery.start(node)
                drivers.append(drv)
                scopes.append(scope)
                events.append(got)
            for drv in drivers[1:]:
                drv.join([drivers[0].core.address])
            await trio.sleep(90.0)
            for trial, victim in enumerate(VICTIMS):
                start = trio.current_time()
                net.crash(drivers[victim].core.address)
                scopes[victim].cancel()
                await trio.sleep(2 * cfg.failure_detection_bound(n))
                vid = drivers[victim].core.me
                for i, got in enumerate(events):
                    if i in VICTIMS[: trial + 1]:
                        continue
                    ts = [e.time - start for e in got
                          if e.kind == EventKind.FAILED and e.member.node_id == vid]
                    if ts:
                        out.append(min(ts))
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    return (f"SimNetwork + trio driver cross-check, n=50, 0% loss, {len(VICTIMS)} crashes: "
            f"detection median {statistics.median(out):.1f} s, max {max(out):.1f} s "
            f"({len(out)} observations)")


def memberlist_reference(n: int) -> str:
    lo = 4 * max(1.0, math.log10(n)) * 1.0
    return f"{lo:.1f}-{6 * lo:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="only n = 10 and 50")
    parser.add_argument("--simnet", action="store_true",
                        help="also cross-check 50 nodes through the trio driver on SimNetwork")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    sizes = (10, 50) if args.quick else (10, 50, 200)
    print("engine: p2pexec.gossip.stepper (sans-IO Membership cores, seeded discrete-event "
          f"loop), GossipConfig.lan(), seed {args.seed}")
    print(f"quiet period {QUIET:.0f} s, {TRIALS} crashes per row, latency 0.5-1 ms\n")
    print("| n | loss | detect median s | detect max s | missed | false pos. | join s "
          "| gossip B/node/s | memberlist suspicion min-max s | sim wall s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for n in sizes:
        for loss in (0.0, 0.05, 0.20):
            r = experiment(n, loss, args.seed)
            join = "n/a" if r.join is None else f"{r.join:.2f}"
            print(f"| {n} | {loss:.0%} | {r.detect_median:.1f} | {r.detect_max:.1f} | "
                  f"{r.undetected} | {r.false_positives} | {join} | {r.bytes_per_node_s:.0f} | "
                  f"{memberlist_reference(n)} | {r.seconds:.1f} |", flush=True)
    print("\nmemberlist DefaultLANConfig: ProbeInterval 1 s, ProbeTimeout 0.5 s, "
          "SuspicionMult 4, SuspicionMaxTimeoutMult 6, GossipInterval 0.2 s; "
          "SWIM's expected first probe of a failed member ~1.58 s.")
    if args.simnet:
        print(simnet_crosscheck())
    sys.stdout.flush()


if __name__ == "__main__":
    main()
