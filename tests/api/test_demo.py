"""`p2pexec demo` as a new user runs it (smaller, deterministic workload)."""

import subprocess
import sys


def test_demo_command_prints_checked_pi_and_throughput():
    result = subprocess.run(
        [sys.executable, "-m", "p2pexec.cli", "demo", "--samples", "400000", "--batches", "4",
         "--cpus", "2"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("p2pexec demo: estimating pi with 400,000 samples")
    assert "[##############################] 4/4 batches" in result.stdout
    assert "(error 0.0" in result.stdout and "4 parameter-server updates) OK" in result.stdout
    assert "tasks/s" in lines[-1] and "M samples/s on 2 CPUs" in lines[-1]
