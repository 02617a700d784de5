"""The programs of examples/ across three `p2pexec join` processes on 127.0.0.1, attached
to the first with `--address`: one of the other two is SIGKILLed part-way (once the
program has shown progress and the node holds some of its work), and the program still
ends with the result it ends with when nothing fails."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

from join_helpers import JoinedNode, Launcher, wait_for
from test_attach import stats
from test_object_transfer import three_nodes

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"

TRIAL_SCORES = {0: 5.22, 1: 6.72, 2: 13.0, 3: 13.44, 4: 20.0, 5: 20.0, 6: 3.3, 7: 4.34,
                8: 4.38, 9: 19.45, 10: 4.31, 11: 20.0, 12: 5.46, 13: 20.0, 14: 3.53,
                15: 9.14}
"""hyperparameter_search at small size, seed 0: every trial's score (as its progress line
shows it), the same however often it ran (tests/examples checks them embedded)."""


class Example:
    """An example running against a node, its stdout read line by line as it comes."""

    def __init__(self, name: str, data_dir: Path, *args: str) -> None:
        env = {k: v for k, v in os.environ.items() if k != "P2PEXEC_DATA_DIR"}
        self.proc = subprocess.Popen(
            [sys.executable, str(EXAMPLES / f"{name}.py"), "--address", str(data_dir), *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for_line(self, pattern: str, limit: float = 90) -> str:
        """The first line (from now on) matching `pattern`; fails if the program ends or
        `limit` seconds pass first."""
        deadline = limit
        while True:
            try:
                line = self._queue.get(timeout=deadline)
            except queue.Empty:
                raise AssertionError(f"no line like {pattern!r} in {limit} s:\n"
                                     + "\n".join(self.lines)) from None
            if line is None:
                raise AssertionError(f"ended before a line like {pattern!r}:\n"
                                     + "\n".join(self.lines) + self.proc.stderr.read())
            self.lines.append(line)
            if re.search(pattern, line):
                return line

    def finish(self, limit: float = 150) -> list[str]:
        """Every line of its output, once it exited with status 0."""
        try:
            self.proc.wait(timeout=limit)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(timeout=30)
        while (line := self._queue.get(timeout=30)) is not None:
            self.lines.append(line)
        out = "\n".join(self.lines)
        assert self.proc.returncode == 0, out + self.proc.stderr.read()
        return self.lines


def kill(node: JoinedNode) -> None:
    os.kill(node.proc.pid, signal.SIGKILL)
    node.proc.wait(timeout=30)


def holding_an_actor(*nodes: JoinedNode) -> JoinedNode:
    """The first of `nodes` on which an actor of the program lives."""
    found = wait_for(lambda: next((n for n in nodes if stats(n)["actors"]), None), 30)
    assert found is not None, [stats(n) for n in nodes]
    return found


def test_hyperparameter_search_finishes_with_the_same_scores_after_a_node_dies(
        launcher: Launcher):
    a, b, c = three_nodes(launcher)
    run = Example("hyperparameter_search", a.data_dir, "--trials", "16", "--sims", "8",
                  "--envs", "256")
    run.wait_for_line(r"\] +2/16 trials")
    assert wait_for(lambda: stats(c)["done"] > 0, 60), stats(c)  # C ran simulations
    kill(c)
    lines = run.finish()
    seen = {int(m.group(1)): float(m.group(2)) for line in lines
            if (m := re.search(r"trials  trial +(\d+): +([\d.]+) s", line))}
    assert len(seen) == 12 and all(TRIAL_SCORES[t] == s for t, s in seen.items()), seen
    best = json.loads(next(line for line in lines if line.startswith("best: "))[6:])
    assert best["trial"] == min(seen, key=seen.get) and lines[-1].startswith("OK: ")
    assert stats(b)["done"] > 0


def test_parameter_servers_are_restored_and_training_ends_at_the_same_loss(
        launcher: Launcher):
    a, b, c = three_nodes(launcher)
    run = Example("parameter_server", a.data_dir, "--features", "256", "--classes", "8",
                  "--samples", "2048", "--workers", "4", "--servers", "3", "--steps", "12",
                  "--target", "1.2")
    run.wait_for_line(r"^step +1 ")
    kill(holding_an_actor(c, b))  # a parameter server dies with its node, and restarts
    lines = run.finish()
    assert any(re.match(r"step \d+: a parameter server restarted", line)
               for line in lines), lines
    # the loss of the run in which nothing failed (tests/examples), to the last digit
    assert lines[-1].startswith("OK: loss 0.5590 < target 1.2 after 12 steps ("), lines


def test_rollouts_go_on_when_an_environment_actors_node_dies(launcher: Launcher):
    a, b, c = three_nodes(launcher)
    run = Example("rollouts", a.data_dir, "--actors", "4", "--batch", "2", "--episodes",
                  "8", "--horizon", "200", "--target", "190")
    run.wait_for_line(r"^update +5 ")
    kill(holding_an_actor(c, b))
    lines = run.finish()
    score = re.search(r"^OK: .* scores ([\d.]+) >= target 190.0 after", lines[-1])
    assert score is not None and 190.0 <= float(score.group(1)) <= 200.0, lines
