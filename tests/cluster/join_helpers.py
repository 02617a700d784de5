"""Real `p2pexec join` processes for the cluster tests: each with its own data dir and log
file, killed (with its worker processes) by `Launcher.kill_all`, which the `launcher`
fixture of conftest.py calls whatever happened."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from p2pexec.config import control_socket_path
from p2pexec.control import NodeNotRunning, request
from p2pexec.net.security import TOKEN_ENV

PX = [sys.executable, "-m", "p2pexec.cli"]
BANNER = re.compile(r"node (\S+) \((\S+)\) listening on (\S+)")


def status_cli(data_dir: Path) -> list[dict[str, Any]] | None:
    """`p2pexec status --json --data-dir D`'s members, or None when no node answers."""
    done = subprocess.run([*PX, "status", "--json", "--data-dir", str(data_dir)],
                          capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        return None
    return json.loads(done.stdout)["members"]


def status(data_dir: Path) -> list[dict[str, Any]] | None:
    """The same answer read straight from the control socket: what tests poll, since a
    Python process per poll would starve the nodes of CPU on a small machine."""
    try:
        return request(control_socket_path(data_dir), "status")["members"]
    except NodeNotRunning:
        return None


def states(members: list[dict[str, Any]] | None) -> dict[str, str]:
    """name -> state of a status answer ({} when there was none)."""
    return {m["name"]: m["state"] for m in members or []}


def wait_for(check: Callable[[], Any], limit: float, interval: float = 0.2) -> Any:
    """Poll `check` until it returns something true or `limit` seconds pass; return its
    last result (falsy on timeout) so the caller's assert shows what was seen."""
    deadline = time.monotonic() + limit
    while True:
        result = check()
        if result or time.monotonic() >= deadline:
            return result
        time.sleep(interval)


@dataclass
class JoinedNode:
    """One `p2pexec join` process started by a test."""

    name: str
    proc: subprocess.Popen[bytes]
    data_dir: Path
    log_path: Path
    short_id: str = ""
    address: str = ""

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_started(self, limit: float = 30.0) -> JoinedNode:
        """Wait for the banner; fail with the log if the process died instead."""
        found = wait_for(lambda: BANNER.search(self.log()) or self.proc.poll() is not None,
                         limit, 0.05)
        match = BANNER.search(self.log())
        assert match is not None, f"{self.name} did not start ({found!r}):\n{self.log()}"
        self.short_id, self.address = match.group(2), match.group(3)
        return self

    def status(self) -> list[dict[str, Any]] | None:
        return status(self.data_dir)

    def status_cli(self) -> list[dict[str, Any]] | None:
        return status_cli(self.data_dir)

    def signal(self, signum: int) -> None:
        os.kill(self.proc.pid, signum)


class Launcher:
    """Starts join processes in their own sessions and kills every one of them at the end."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.nodes: list[JoinedNode] = []

    def start(self, name: str, token: str | None, args: Sequence[str] = (),
              command: Callable[[list[str]], list[str]] = list) -> JoinedNode:
        """`p2pexec join --name NAME [--token T] --data-dir <tmp>/NAME --cpus 1 ARGS`,
        stdout and stderr to <tmp>/NAME.log; `command` may wrap the argv (namespaces).
        $P2PEXEC_TOKEN is not passed on, so `token=None` creates a new cluster."""
        data_dir = self.base / name
        log_path = self.base / f"{name}.log"
        token_args = [] if token is None else ["--token", token]
        argv = command([*PX, "join", "--name", name, *token_args, "--data-dir",
                        str(data_dir), "--cpus", "1", *args])
        env = {k: v for k, v in os.environ.items() if k != TOKEN_ENV}
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env,
                                    start_new_session=True)
        node = JoinedNode(name, proc, data_dir, log_path)
        self.nodes.append(node)
        return node

    def kill_all(self) -> None:
        for node in self.nodes:
            if node.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(node.proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                node.proc.wait(timeout=10)
