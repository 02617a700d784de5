"""Real `p2pexec join` processes for the benchmarks (loopback only, private data dirs)."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path


class JoinProcesses:
    """`p2pexec join` processes on loopback, each with a private data dir and `cpus` CPUs."""

    def __init__(self, prefix: str, cpus: float) -> None:
        from p2pexec.net.security import new_token

        self.cpus = cpus
        self.base = Path(tempfile.mkdtemp(prefix=prefix))
        self.token = new_token()
        self.nodes: list[tuple[subprocess.Popen, Path]] = []

    def start(self, name: str, peer: str | None) -> tuple[subprocess.Popen, Path, str]:
        from p2pexec.config import control_socket_path
        from p2pexec.control import NodeNotRunning, request

        data_dir = self.base / name
        log = open(self.base / f"{name}.log", "wb")  # the process writes it until stopped
        args = [sys.executable, "-m", "p2pexec.cli", "join", "--name", name, "--token",
                self.token, "--host", "127.0.0.1", "--port", "0", "--gossip", "local",
                "--no-mdns", "--cpus", str(self.cpus), "--data-dir", str(data_dir)]
        if peer:
            args += ["--peer", peer]
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        self.nodes.append((proc, data_dir))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                members = request(control_socket_path(data_dir), "status")["members"]
            except NodeNotRunning:
                members = []
            if members and members[0]["address"]:  # the cluster service is up
                return proc, data_dir, members[0]["address"]
            time.sleep(0.1)
        raise RuntimeError(f"node {name} did not start")

    def wait_members(self, data_dir: Path, n: int) -> None:
        from p2pexec.config import control_socket_path
        from p2pexec.control import request

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            members = request(control_socket_path(data_dir), "status")["members"]
            if sum(m["state"] == "alive" for m in members) == n:
                return
            time.sleep(0.1)
        raise RuntimeError(f"the {n} nodes did not see each other")

    def stop(self) -> None:
        for proc, _ in self.nodes:
            proc.terminate()
        for proc, _ in self.nodes:
            proc.wait(timeout=30)
