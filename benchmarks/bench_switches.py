"""Where a sync round trip's time goes: context switches and CPU per thread, per round trip.

Run: `python benchmarks/bench_switches.py [--round-trips N]` (Linux: it reads
/proc/PID/task/TID). For the embedded node and for a driver attached to a `p2pexec
join` node it runs N `get(noop.remote(i))` round trips and prints, per thread of the
driver, the node and the busy worker: voluntary and involuntary context switches and
CPU microseconds (user + system) per round trip.

Why it matters: on 2 cores, each extra sleep/wake in the chain driver -> node -> worker
-> node -> driver needs a free CPU, so round trips slow down when the machine is busy.
The minimum is 4 voluntary switches per round trip (the driver waits once, the node
twice, the worker once); whatever is above that is a wake-up worth explaining. A round
trip whose CPU per thread adds up to its wall time is bound by Python work, not waits.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from _common import render_table
from bench_core import Attached, P2pexec, noop

TICKS = os.sysconf("SC_CLK_TCK")


def thread_counters(pid: int) -> dict[tuple[int, int], tuple[str, int, int, float]]:
    """(pid, tid) -> (thread name, voluntary, involuntary switches, CPU seconds)."""
    out = {}
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            status = (task / "status").read_text().splitlines()
            stat = (task / "stat").read_text().rsplit(") ", 1)[1].split()
        except OSError:
            continue
        fields = dict(line.split(":\t", 1) for line in status if ":\t" in line)
        out[(pid, int(task.name))] = (
            fields["Name"].strip(), int(fields["voluntary_ctxt_switches"]),
            int(fields["nonvoluntary_ctxt_switches"]),
            (int(stat[11]) + int(stat[12])) / TICKS)
    return out


def children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(") ", 1)[1].split()[1]) == pid:
                found.append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    return found


def measure(system: P2pexec, node_pid: int, round_trips: int) -> tuple[list[list[str]], float]:
    """Rows for every thread that switched at least once per 20 round trips, and the
    mean round trip in microseconds."""
    remote = system.remote(noop)
    for i in range(300):
        system.get(remote(i), 60)
    pids = list(dict.fromkeys([os.getpid(), node_pid, *children(node_pid)]))
    before = {}
    for pid in pids:
        before.update(thread_counters(pid))
    started = time.perf_counter()
    for i in range(round_trips):
        system.get(remote(i), 60)
    elapsed = time.perf_counter() - started
    rows = []
    for pid in pids:
        for key, (name, voluntary, involuntary, cpu) in thread_counters(pid).items():
            if key not in before:
                continue
            _, voluntary0, involuntary0, cpu0 = before[key]
            switches = (voluntary - voluntary0 + involuntary - involuntary0) / round_trips
            if switches < 0.05:
                continue
            role = ("driver" if pid == os.getpid() else
                    "node" if pid == node_pid else "worker")
            rows.append([f"{role} {pid}/{key[1]} ({name})",
                         f"{(voluntary - voluntary0) / round_trips:.2f}",
                         f"{(involuntary - involuntary0) / round_trips:.2f}",
                         f"{(cpu - cpu0) / round_trips * 1e6:.0f}"])
    return rows, elapsed / round_trips * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--round-trips", type=int, default=5000)
    args = parser.parse_args()
    header = ["thread", "voluntary/rt", "involuntary/rt", "CPU us/rt"]
    for system in (P2pexec(), Attached()):
        system.start()
        try:
            node_pid = system.node.pid if isinstance(system, Attached) else os.getpid()
            rows, micros = measure(system, node_pid, args.round_trips)
        finally:
            system.stop()
        print(f"\n{system.name}: {micros:.0f} us per round trip "
              f"({args.round_trips} round trips)")
        print(render_table(header, rows))


if __name__ == "__main__":
    main()
