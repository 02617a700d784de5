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


def test_demo_across_three_join_nodes_survives_one_killed():
    result = subprocess.run(
        [sys.executable, "-m", "p2pexec.cli", "demo", "--nodes", "3", "--samples", "8000000",
         "--batches", "30"], capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "started 3 nodes on 127.0.0.1" in out
    assert "SIGKILLed node n2 after 10/30 batches" in out
    assert "30 parameter-server updates) OK" in out
    lines = out.splitlines()
    rows = lines[lines.index("per node: tasks run / taken from peers / given to peers") + 1:]
    assert rows[2] == "  n2: killed"
    n0, n1 = (row.split(": ")[1].split(" / ") for row in rows[:2])
    assert int(n0[2].split()[0]) > 0 and int(n1[1].split()[0]) > 0  # n1 took work from n0
