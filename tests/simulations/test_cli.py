"""`p2pexec simulate` as a user runs it: list, run, files written, verdict, failure with
the command that reproduces it, shrink, replay."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from p2pexec.cli import main as p2pexec_main
from simulations.cli import main
from simulations.scenarios import SCENARIOS


def test_list_describes_every_scenario_in_one_line(capsys: pytest.CaptureFixture) -> None:
    assert main(["--list"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == len(SCENARIOS) >= 7
    for name, line in zip(SCENARIOS, lines, strict=True):
        assert line.startswith(name) and SCENARIOS[name].summary in line


def test_a_run_writes_its_series_and_schedule_and_ends_with_a_verdict(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = p2pexec_main(["simulate", "mass-failure", "--nodes", "12", "--engine", "stepper",
                         "--seed", "4", "--duration", "70", "--out", str(tmp_path)])
    out, err = capsys.readouterr()
    assert code == 0, out
    last = out.strip().splitlines()[-1]
    assert last.startswith("PASS: detects-crashes ok") and "trace " in last
    assert "70 / 70 simulated s" in err  # progress
    with (tmp_path / "series.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [float(r["t"]) for r in rows] == [float(t) for t in range(71)]
    assert float(rows[-1]["up"]) == 12 - 4
    schedule = json.loads((tmp_path / "schedule.json").read_text())
    assert [e["kind"] for e in schedule] == ["crash"] * 4


def test_a_failing_run_exits_1_with_the_command_that_reproduces_it_and_shrinks(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Crashes 2 s before the end: views cannot be exact yet."""
    argv = ["mass-failure", "--nodes", "12", "--engine", "stepper", "--duration", "12",
            "--quiet", "--shrink", "--out", str(tmp_path)]
    assert main(argv) == 1
    out = capsys.readouterr().out
    assert "converges FAILED" in out.strip().splitlines()[-1]
    assert "shrunk the faults from 4 to 1" in out
    reproduce = next(line for line in out.splitlines() if "reproduce:" in line)
    command = reproduce.split("reproduce: ", 1)[1].split()
    assert command[:5] == ["p2pexec", "simulate", "mass-failure", "--seed", "1"]
    assert "--schedule" in command and (tmp_path / "shrunk.json").exists()
    replay = [*command[2:], "--quiet", "--out", str(tmp_path / "replay")]
    assert main(replay) == 1
    again = capsys.readouterr().out
    assert "events in schedule   1" in again


def test_usage_errors_are_one_line_and_exit_2(tmp_path: Path,
                                              capsys: pytest.CaptureFixture) -> None:
    assert main(["no-such-scenario"]) == 2
    assert "no scenario 'no-such-scenario'" in capsys.readouterr().err
    assert main([]) == 2
    bad = tmp_path / "bad.json"
    bad.write_text('[{"kind": "crash", "at": "soon", "node": 1}]')
    assert main(["churn", "--schedule", str(bad), "--engine", "stepper"]) == 2
    assert "not a schedule" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="needs at least 5 nodes"):
        main(["churn", "--nodes", "2"])
    with pytest.raises(SystemExit, match="--loss"):
        main(["churn", "--loss", "1.5"])


def test_python_dash_m_simulations_is_the_same_command() -> None:
    import subprocess
    import sys

    listed = subprocess.run([sys.executable, "-m", "simulations", "--list"],
                            capture_output=True, text=True, check=True, timeout=120)
    assert listed.stdout.splitlines()[0].startswith("churn")


def test_the_false_positive_budget_is_the_users_to_set(capsys: pytest.CaptureFixture,
                                                      tmp_path: Path) -> None:
    """At 20% loss, 50 nodes, seed 5, two live members are declared failed: within the
    default budget; with a budget of 1 the run fails, and the reproduce command carries
    the budget."""
    argv = ["lossy", "--nodes", "50", "--engine", "stepper", "--seed", "5", "--quiet",
            "--duration", "120", "--out", str(tmp_path)]
    assert main(argv) == 0
    assert "false-positives ok (2 (budget 4))" in capsys.readouterr().out
    assert main([*argv, "--fp-budget", "1"]) == 1
    strict = capsys.readouterr().out
    assert "false-positives FAILED (2 (budget 1)" in strict and "--fp-budget 1" in strict
