"""A cluster of real `p2pexec join` processes on 127.0.0.1, for the demo, benchmarks and
tests: a fresh token, a private data dir per node, no mDNS, fast gossip. Each process is
ours to stop: `stop()` ends every one still running, and `kill(i)` SIGKILLs one (its
workers die with it)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from p2pexec.config import control_socket_path
from p2pexec.control import NodeNotRunning, request
from p2pexec.net.security import TOKEN_ENV, new_token


class LocalCluster:
    """`n` join processes named n0, n1, ... with `cpus` CPUs each; n1.. seed from n0."""

    def __init__(self, n: int, cpus: float = 1, prefix: str = "p2pexec-local-",
                 extra_args: tuple[str, ...] = ()) -> None:
        self.n = n
        self.cpus = cpus
        self.extra_args = extra_args
        self.base = Path(tempfile.mkdtemp(prefix=prefix))
        self.token = new_token()
        self.procs: list[subprocess.Popen[bytes]] = []
        self.data_dirs: list[Path] = []
        self.addresses: list[str] = []

    def __enter__(self) -> LocalCluster:
        self.start()
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None
                 ) -> None:
        self.stop()

    def start(self, timeout: float = 60.0) -> None:
        """Start every node and wait until the first sees them all alive."""
        for i in range(self.n):
            self.addresses.append(self._start(f"n{i}", self.addresses[0] if i else None,
                                              timeout))
        self.wait_members(0, self.n, timeout)

    def _start(self, name: str, peer: str | None, timeout: float) -> str:
        data_dir = self.base / name
        args = [sys.executable, "-m", "p2pexec.cli", "join", "--name", name, "--token",
                self.token, "--host", "127.0.0.1", "--port", "0", "--gossip", "local",
                "--no-mdns", "--cpus", f"{self.cpus:g}", "--data-dir", str(data_dir),
                *self.extra_args]
        if peer:
            args += ["--peer", peer]
        env = {k: v for k, v in os.environ.items() if k != TOKEN_ENV}
        with open(self.base / f"{name}.log", "wb") as log:
            proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)
        self.procs.append(proc)
        self.data_dirs.append(data_dir)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"node {name} exited: {self.log(len(self.procs) - 1)}")
            try:
                members = request(control_socket_path(data_dir), "status")["members"]
            except NodeNotRunning:
                members = []
            if members and members[0]["address"]:  # the cluster service is up
                return members[0]["address"]
            time.sleep(0.05)
        raise RuntimeError(f"node {name} did not start within {timeout:g} s")

    def log(self, index: int) -> str:
        return (self.base / f"n{index}.log").read_text(errors="replace")

    def request(self, index: int, op: str) -> Any:
        return request(control_socket_path(self.data_dirs[index]), op)

    def wait_members(self, index: int, alive: int, timeout: float = 60.0) -> None:
        """Wait until node `index` sees `alive` members alive (itself included)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            members = self.request(index, "status")["members"]
            if sum(m["state"] == "alive" for m in members) == alive:
                return
            time.sleep(0.1)
        raise RuntimeError(f"node n{index} did not see {alive} members alive")

    def kill(self, index: int) -> None:
        """SIGKILL node `index`, as if its machine were unplugged."""
        self.procs[index].send_signal(signal.SIGKILL)
        self.procs[index].wait(timeout=30)

    def alive(self, index: int) -> bool:
        return self.procs[index].poll() is None

    def stop(self) -> None:
        """Stop every node still running (gracefully), then remove the data dirs."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=30)
        shutil.rmtree(self.base, ignore_errors=True)
