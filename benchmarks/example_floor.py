"""The compute floor of the programs of examples/: their own code with no framework.

Run: `python benchmarks/example_floor.py [--examples a,b] [--repeats 3] [--cores 2]
[--order fifo|root] [--json] [--calls FILE] [-- example arguments]`. Sets
OMP_NUM_THREADS=1 (as the workers run) unless it is set.

Each example is imported with `p2pexec` replaced by `Serial`, a stand-in with the names
the examples use (remote, options, get, put, wait, cancel, init, shutdown), and its
`main()` runs unchanged, at its default (full) size unless given arguments. Every task
and actor call runs for real, one at a time, in this process, in a thread of its own,
timed with time.thread_time (CPU seconds). A discrete-event scheduler places each call
on a virtual clock of `cores` cores: among the calls that are ready the first submitted
runs first (`--order root`: those descending from the driver's oldest call, so an older
trial's simulations first), a task blocked in get/wait gives its core back until its
refs are ready (as in Ray and p2pexec), an actor runs its calls one at a time in the
order they came, and the driver runs beside the cores (its CPU counts on its own
timeline). px.wait answers by the virtual clock, so the program takes the path a
framework with no overhead at all would give it; the run ends when the driver does
(what was still queued, or cancelled, never runs).

Figures, per example (seconds):
* work: CPU of the task and actor-call bodies up to the end of the program (a call
  running at the end counts up to it): the serial compute, for the path taken.
* driver: the driver's own CPU after px.init() (e.g. making a dataset).
* critical: the program's time on unlimited cores (its critical path: dependencies, the
  driver's own work, the calls that follow one another on an actor).
* bound: max(critical, lead + work / cores), lead being the time from px.init() to the
  driver's first call (the driver alone): a lower bound on `cores` cores, for the path.
* ideal: the program's time on `cores` virtual cores with no overhead.
* cpu, wall: time.process_time and time.perf_counter of the whole serial run.

A path that depends on timing (which trials a search waits for, which rollouts make a
batch) may differ from a framework's, and so may its work. The cores are taken to run
side by side each at the speed of one alone: an optimistic floor.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before numpy loads its BLAS

import argparse
import contextlib
import importlib.util
import io
import json
import math
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from _common import median, render_table

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ("hyperparameter_search", "parameter_server", "rollouts")


class _Abort(BaseException):
    """Unwinds a task still blocked when the program ends."""


class Ref:
    """An object ref: ready at virtual time `done` once the call making it has run."""

    __slots__ = ("call", "done", "error", "value")

    def __init__(self, call: Call | None = None) -> None:
        self.call = call
        self.done: float | None = None
        self.value: Any = None
        self.error: BaseException | None = None


@dataclass(eq=False)
class Call:
    """One task or actor call: what to run, on what, and when it was submitted."""

    seq: int
    name: str
    body: Callable[..., Any]
    args: tuple
    kwargs: dict
    refs: list[Ref]
    submitted: float
    parent: int | None
    root: int  # seq of the driver's call it descends from (its own when the driver's)
    actor: Actor | None = None
    ready: float = 0.0
    start: float | None = None
    end: float | None = None
    cpu: float = 0.0
    cancelled: bool = False

    def deps(self) -> list[Ref]:
        return [a for a in (*self.args, *self.kwargs.values()) if isinstance(a, Ref)]


@dataclass(eq=False)
class Actor:
    """An actor's instance and its calls not run yet, in order."""

    name: str
    instance: Any = None
    queue: deque[Call] = field(default_factory=deque)
    free_at: float = 0.0


class Proc:
    """A thread the scheduler runs one segment at a time: a call's body or the driver.
    A segment runs until the body ends or blocks in get/wait."""

    def __init__(self, sim: Serial, target: Callable[[], Any], call: Call | None) -> None:
        self.sim, self.target, self.call = sim, target, call
        self.go = threading.Semaphore(0)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.clock = 0.0  # virtual time at which the current segment started
        self.cpu0 = 0.0
        self.seg_cpu = 0.0  # CPU of the last segment
        self.blocked: tuple[list[Ref], int, float] | None = None
        self.answer: list[Ref] = []
        self.finished = False
        self.abort = False
        self.result: Any = None
        self.error: BaseException | None = None
        self.seg_cpu_total = 0.0  # CPU of its segments so far

    def now(self) -> float:
        return self.clock + time.thread_time() - self.cpu0

    def _run(self) -> None:
        self.go.acquire()
        self.cpu0 = time.thread_time()
        try:
            self.result = self.target()
        except _Abort:
            pass
        except BaseException as exc:  # kept for whoever gets the refs
            self.error = exc
        self.seg_cpu = time.thread_time() - self.cpu0
        self.finished = True
        self.sim.back.release()

    def block(self, refs: list[Ref], k: int) -> list[Ref]:
        """Yield to the scheduler until `k` of `refs` are ready; those (in input order)."""
        self.seg_cpu = time.thread_time() - self.cpu0
        self.blocked = (refs, k, self.clock + self.seg_cpu)
        self.sim.back.release()
        self.go.acquire()
        if self.abort:
            raise _Abort
        self.cpu0 = time.thread_time()
        return self.answer


class _Method:
    def __init__(self, sim: Serial, actor: Actor, name: str, num_returns: int = 1) -> None:
        self.sim, self.actor, self.name, self.num_returns = sim, actor, name, num_returns

    def options(self, num_returns: int = 1, **_: Any) -> _Method:
        return _Method(self.sim, self.actor, self.name, num_returns)

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        actor, name = self.actor, self.name
        return self.sim.submit(f"{actor.name}.{name}",
                               lambda *a, **k: getattr(actor.instance, name)(*a, **k),
                               args, kwargs, self.num_returns, actor)


class _Handle:
    def __init__(self, sim: Serial, actor: Actor) -> None:
        self._sim, self._actor = sim, actor

    def __getattr__(self, name: str) -> _Method:
        if name.startswith("_"):
            raise AttributeError(name)
        return _Method(self._sim, self._actor, name)


class _Remote:
    """A remote function or actor class of the stand-in."""

    def __init__(self, sim: Serial, target: Any, num_returns: int = 1) -> None:
        self.sim, self.target, self.num_returns = sim, target, num_returns

    def options(self, num_returns: int = 1, **_: Any) -> _Remote:
        return _Remote(self.sim, self.target, num_returns)

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        if isinstance(self.target, type):
            actor = Actor(self.target.__name__)

            def create(*a: Any, **k: Any) -> None:
                actor.instance = self.target(*a, **k)

            self.sim.submit(f"{actor.name}.__init__", create, args, kwargs, 1, actor)
            return _Handle(self.sim, actor)
        return self.sim.submit(self.target.__name__, self.target, args, kwargs,
                               self.num_returns, None)


class Serial:
    """The stand-in for `p2pexec` (and `ray`): runs the program serially on a virtual
    clock of `cores` cores (None: unlimited)."""

    def __init__(self, cores: int | None, order: str = "fifo") -> None:
        self.cores = cores
        self.order = order
        self.core_free = [0.0] * cores if cores else []
        self.back = threading.Semaphore(0)
        self.current: Proc | None = None
        self.calls: list[Call] = []
        self.pending: list[Call] = []  # waiting for refs or their actor's earlier calls
        self.runnable: list[tuple[float, int, Proc | Call]] = []  # (ready, rank, what)
        self.waiting: list[Proc] = []
        self.driver: Proc | None = None
        self.started: float | None = None  # driver's virtual time when px.init returned
        self.ended: float | None = None  # ... and when px.shutdown was called
        self.driver_cpu0 = 0.0
        self.driver_cpu = 0.0  # the driver's CPU from px.init to px.shutdown
        self.segments: list[tuple[Call, float, float]] = []  # (call, start, end)

    # -- the API the examples use -------------------------------------------------------

    def remote(self, *args: Any, **_: Any) -> Any:
        if args:
            return _Remote(self, args[0])
        return lambda target: _Remote(self, target)

    def init(self, *_: Any, **__: Any) -> None:
        self.started = self._proc().now()
        self.driver_cpu0 = self._driver_cpu()

    def shutdown(self) -> None:
        self.ended = self._proc().now()
        self.driver_cpu = self._driver_cpu() - self.driver_cpu0

    def put(self, value: Any) -> Ref:
        ref = Ref()
        ref.value, ref.done = value, self._proc().now()
        return ref

    def get(self, refs: Ref | Sequence[Ref], *, timeout: float | None = None) -> Any:
        many = not isinstance(refs, Ref)
        listed = list(refs) if many else [refs]
        self._proc().block(listed, len(listed))
        for ref in listed:
            if ref.error is not None:
                raise ref.error
        return [ref.value for ref in listed] if many else listed[0].value

    def wait(self, refs: Sequence[Ref], *, num_returns: int = 1, timeout: float | None = None
             ) -> tuple[list[Ref], list[Ref]]:
        listed = list(refs)
        ready = self._proc().block(listed, num_returns)
        return ready, [ref for ref in listed if ref not in ready]

    def cancel(self, ref: Ref, **_: Any) -> None:
        if ref.call is not None:
            ref.call.cancelled = True  # the program goes on; its end ends the run

    # -- the scheduler --------------------------------------------------------------------

    def _proc(self) -> Proc:
        assert self.current is not None
        return self.current

    def _driver_cpu(self) -> float:
        assert self.driver is not None
        return self.driver.seg_cpu_total + time.thread_time() - self.driver.cpu0

    def submit(self, name: str, body: Callable[..., Any], args: tuple, kwargs: dict,
               num_returns: int, actor: Actor | None) -> Any:
        proc = self._proc()
        seq = len(self.calls)
        call = Call(seq, name, body, args, kwargs, [], proc.now(),
                    proc.call.seq if proc.call else None,
                    proc.call.root if proc.call else seq, actor)
        call.refs = [Ref(call) for _ in range(num_returns)]
        self.calls.append(call)
        self.pending.append(call)
        if actor is not None:
            actor.queue.append(call)
        return call.refs[0] if num_returns == 1 else list(call.refs)

    def _promote(self) -> None:
        """Move the calls whose refs are made (and whose actor is at them) to runnable."""
        still = []
        for call in self.pending:
            deps = call.deps()
            if any(d.done is None for d in deps) or (
                    call.actor is not None and call.actor.queue[0] is not call):
                still.append(call)
                continue
            call.ready = max([call.submitted, *(d.done for d in deps)]
                             + ([call.actor.free_at] if call.actor else []))
            self.runnable.append((call.ready, self._rank(call), call))
        self.pending = still

    def _rank(self, call: Call | None) -> int:
        """Priority among the ready (lower first): submission order ("fifo"), or that of
        the driver's call it descends from ("root": an older trial's tasks first)."""
        if call is None:
            return -1
        return call.root * 2**32 + call.seq if self.order == "root" else call.seq

    def _next_runnable(self) -> tuple[float, int] | None:
        """(start, index in runnable) of what runs next: by rank among the ready."""
        if not self.runnable:
            return None
        free = min(self.core_free) if self.cores else -math.inf
        best: tuple[float, int, int] | None = None  # (start, seq, index)
        for i, (ready, seq, what) in enumerate(self.runnable):
            on_core = not (isinstance(what, Proc) and what is self.driver)
            start = max(ready, free) if on_core else ready
            key = (start, seq, i)
            if best is None or key < best:
                best = key
        assert best is not None
        return best[0], best[2]

    def _next_waiter(self) -> tuple[float, Proc, list[Ref]] | None:
        """The blocked proc whose refs are ready first: (time, proc, its answer)."""
        best = None
        for proc in self.waiting:
            assert proc.blocked is not None
            refs, k, since = proc.blocked
            times = sorted(r.done for r in refs if r.done is not None)
            if len(times) < k:
                continue
            at = max(since, times[k - 1] if k else since)
            if best is None or at < best[0]:
                answer = [r for r in refs if r.done is not None and r.done <= at][:k]
                best = (at, proc, answer)
        return best

    def _segment(self, proc: Proc, start: float) -> float:
        """Run `proc` from `start` until it blocks or ends; the virtual time it stops."""
        proc.clock = start
        self.current = proc
        if not proc.thread.is_alive() and not proc.finished:
            proc.thread.start()
        proc.go.release()
        self.back.acquire()
        self.current = None
        proc.seg_cpu_total += proc.seg_cpu
        return start + proc.seg_cpu

    def _run(self, what: Proc | Call, start: float) -> None:
        if isinstance(what, Call):
            call = what
            args = tuple(a.value if isinstance(a, Ref) else a for a in call.args)
            kwargs = {k: v.value if isinstance(v, Ref) else v for k, v in call.kwargs.items()}
            proc = Proc(self, lambda: call.body(*args, **kwargs), call)
            call.start = start
        else:
            proc = what
        on_core = proc is not self.driver
        if on_core and self.cores:
            self.core_free.remove(min(self.core_free))
        end = self._segment(proc, start)
        if on_core and self.cores:
            self.core_free.append(end)
        if proc.call is not None:
            proc.call.cpu += proc.seg_cpu
            self.segments.append((proc.call, start, end))
        if not proc.finished:
            self.waiting.append(proc)
            return
        if proc is self.driver:
            return
        call = proc.call
        assert call is not None
        call.end = end
        values = [proc.result] if len(call.refs) == 1 else list(proc.result or
                                                                 [None] * len(call.refs))
        for ref, value in zip(call.refs, values, strict=True):
            ref.value, ref.error, ref.done = value, proc.error, end
        if call.actor is not None:
            call.actor.queue.popleft()
            call.actor.free_at = end

    def run(self, main: Callable[[], Any]) -> Any:
        """Run the driver `main` to its end on the virtual clock; what it returned."""
        self.driver = Proc(self, main, None)
        self.runnable.append((0.0, -1, self.driver))
        while not self.driver.finished:
            self._promote()
            nxt = self._next_runnable()
            waiter = self._next_waiter()
            if waiter is not None and (nxt is None or waiter[0] <= nxt[0]):
                at, proc, proc.answer = waiter
                self.waiting.remove(proc)
                proc.blocked = None
                self.runnable.append((at, self._rank(proc.call), proc))
                continue
            if nxt is None:
                raise RuntimeError("deadlock: nothing can run and nothing is ready")
            start, index = nxt
            _, _, what = self.runnable.pop(index)
            self._run(what, start)
        for proc in self.waiting:  # unwind the tasks still blocked
            proc.abort = True
            proc.go.release()
            proc.thread.join()
        if self.driver.error is not None:
            raise self.driver.error
        return self.driver.result


def load_example(name: str, stand_in: Serial) -> ModuleType:
    """examples/<name>.py imported with `stand_in` as its `px`."""
    saved = sys.modules.get("p2pexec")
    sys.modules["p2pexec"] = stand_in  # type: ignore[assignment]
    try:
        spec = importlib.util.spec_from_file_location(f"_floor_{name}",
                                                      ROOT / "examples" / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        if saved is None:
            del sys.modules["p2pexec"]
        else:
            sys.modules["p2pexec"] = saved
    return module


@dataclass
class Result:
    """One serial run of one example on a virtual clock (seconds)."""

    time: float  # px.init returning to px.shutdown, on the virtual clock
    work: float  # CPU of the call bodies up to then
    lead: float  # px.init returning to the first call submitted: the driver alone
    driver: float  # the driver's CPU after px.init
    cpu: float  # time.process_time of the whole run
    wall: float  # time.perf_counter of the whole run
    calls: list[Call]
    output: str  # what the example printed


def run_once(name: str, cores: int | None, argv: list[str], order: str = "fifo") -> Result:
    """Run examples/<name>.py's main(argv) serially on `cores` virtual cores."""
    sim = Serial(cores, order)
    module = load_example(name, sim)
    out = io.StringIO()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    with contextlib.redirect_stdout(out):
        status = sim.run(lambda: module.main(argv))
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    if status != 0 or sim.started is None or sim.ended is None:
        raise RuntimeError(f"{name} failed on the stand-in:\n{out.getvalue()}")
    begin, end = sim.started, sim.ended
    work = sum(max(0.0, min(e, end) - max(s, begin)) for _, s, e in sim.segments)
    lead = min((c.submitted for c in sim.calls if c.submitted >= begin), default=end) - begin
    return Result(end - begin, work, lead, sim.driver_cpu, cpu, wall, sim.calls,
                  out.getvalue())


COLUMNS = ("work", "driver", "critical", "bound", "ideal", "cpu", "wall")


def floor(name: str, cores: int, argv: list[str], order: str = "fifo"
          ) -> tuple[dict[str, float], Result]:
    """The figures of one example (a run on `cores` cores and one on unlimited cores),
    and the run on `cores` cores."""
    ideal = run_once(name, cores, argv, order)
    critical = run_once(name, None, argv, order)
    figures = {"work": ideal.work, "driver": ideal.driver, "critical": critical.time,
               "bound": max(critical.time, ideal.lead + ideal.work / cores),
               "ideal": ideal.time, "cpu": ideal.cpu, "wall": ideal.wall}
    return figures, ideal


def dump_calls(path: Path, name: str, calls: list[Call]) -> None:
    """Append one JSON line per call that ran: its name, parent, root, CPU, start, end."""
    with path.open("a") as out:
        for c in calls:
            if c.start is not None:
                out.write(json.dumps({"example": name, "seq": c.seq, "name": c.name,
                                      "parent": c.parent, "root": c.root, "cpu": c.cpu,
                                      "start": c.start, "end": c.end}) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", default=",".join(EXAMPLES))
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--order", choices=("fifo", "root"), default="fifo",
                        help="which ready call runs first: the first submitted, or "
                             "those of the driver's oldest call (an older trial first)")
    parser.add_argument("--json", action="store_true", help="one JSON line per run")
    parser.add_argument("--calls", type=Path,
                        help="append every call of the runs on --cores cores to this file")
    parser.add_argument("argv", nargs="*", help="arguments for the example (after --)")
    args = parser.parse_args()
    rows = []
    for name in args.examples.split(","):
        runs = []
        for repeat in range(args.repeats):
            figures, run = floor(name, args.cores, args.argv, args.order)
            runs.append(figures)
            last = run.output.strip().splitlines()[-1]
            if args.calls:
                dump_calls(args.calls, name, run.calls)
            if args.json:
                print(json.dumps({"example": name, **figures, "last": last}), flush=True)
            else:
                print(f"{name} run {repeat + 1}: "
                      + ", ".join(f"{c} {figures[c]:.2f}" for c in COLUMNS)
                      + f"\n  {last}", file=sys.stderr, flush=True)
        rows.append([name, *(f"{median([r[c] for r in runs]):.2f} "
                             f"({min(r[c] for r in runs):.2f}-{max(r[c] for r in runs):.2f})"
                             for c in COLUMNS)])
    if not args.json:
        print(f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}, {args.cores} cores, order "
              f"{args.order}; seconds, median of {args.repeats} (min-max)")
        print(render_table(["example", *(f"{c} s" for c in COLUMNS)], rows))


if __name__ == "__main__":
    main()
