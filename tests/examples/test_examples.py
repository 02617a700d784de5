"""The programs of examples/ at small size, as a user runs them: each in a fresh
interpreter on an embedded node, checked by its own exit status and by the result it
prints; then the same files with their one import line swapped for `import ray as px`,
on Ray, giving the same results (skipped when Ray is not installed)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
IMPORT_LINE = "import p2pexec as px\n"

SMALL = {
    "hyperparameter_search": ["--trials", "16", "--sims", "8", "--envs", "256"],
    "parameter_server": ["--features", "256", "--classes", "8", "--samples", "2048",
                         "--workers", "4", "--servers", "2", "--steps", "12",
                         "--target", "1.2"],
    "rollouts": ["--actors", "4", "--batch", "2", "--episodes", "8", "--horizon", "200",
                 "--target", "190"],
}
"""Arguments for a run of a few seconds; the defaults are the benchmark's full size."""

TRIAL_SCORES = {0: 5.22, 1: 6.72, 2: 13.0, 3: 13.44, 4: 20.0, 5: 20.0, 6: 3.3, 7: 4.34,
                8: 4.38, 9: 19.45, 10: 4.31, 11: 20.0, 12: 5.46, 13: 20.0, 14: 3.53,
                15: 9.14}
"""hyperparameter_search at small size, seed 0: each trial's score as its progress line
shows it (tests/cluster/test_examples_mesh.py holds the same figures)."""

BEST_TRIAL = {"trial": 6, "kp": 16.341, "kd": 7.788, "score": 3.3}
"""The best of those 16; the second best, trial 14, starts last, so the default search
(which stops after 12) may cancel it as a straggler."""

FINAL_LOSS = "loss 0.5590 < target 1.2 after 12 steps"
"""Seed 0, small size: the update of every step is exact, so the loss is the same to
the last digit whatever the order of the pushes, and on Ray."""


def run_example(path: Path, args: list[str], env: dict[str, str] | None = None,
                timeout: float = 120) -> str:
    """Run one example to its end; its stdout, after checking it exited with status 0."""
    done = subprocess.run([sys.executable, str(path), *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})}, cwd=ROOT)
    assert done.returncode == 0, f"{path.name} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def check(name: str, out: str) -> None:
    """The result each example printed is the expected one."""
    last = out.strip().splitlines()[-1]
    assert last.startswith("OK: "), out
    if name == "hyperparameter_search":
        best = next(line for line in out.splitlines() if line.startswith("best: "))
        assert json.loads(best.removeprefix("best: ")) == BEST_TRIAL, out
        assert "cancelled 4 straggling trials; the best of 12:" in out
        scores = progress_scores(out)
        assert len(scores) == 12 and all(TRIAL_SCORES[t] == s for t, s in scores.items())
    elif name == "parameter_server":
        assert FINAL_LOSS in last, out
    else:
        score = re.search(r"scores ([0-9.]+) >= target 190.0 after", last)
        assert score is not None and 190.0 <= float(score.group(1)) <= 200.0, out


def test_each_example_imports_its_framework_in_one_line():
    for name in SMALL:
        source = (EXAMPLES / f"{name}.py").read_text()
        imports = [line for line in source.splitlines()
                   if line.startswith(("import ", "from ")) and "p2pexec" in line]
        assert imports == [IMPORT_LINE.strip()], name


def test_each_example_uses_only_names_ray_has():
    import p2pexec

    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install '.[bench]')")
    for name in SMALL:
        used = set(re.findall(r"\bpx\.(\w+)", (EXAMPLES / f"{name}.py").read_text()))
        assert used and all(hasattr(p2pexec, n) and hasattr(ray, n) for n in used), used


@pytest.mark.parametrize("name", sorted(SMALL))
def test_example_runs_embedded_and_checks_its_result(name: str):
    check(name, run_example(EXAMPLES / f"{name}.py", SMALL[name]))


def progress_scores(out: str) -> dict[int, float]:
    """trial -> score, from the progress lines of hyperparameter_search."""
    return {int(m.group(1)): float(m.group(2)) for m in
            re.finditer(r"trials  trial +(\d+): +([\d.]+) s", out)}


def test_the_search_that_waits_for_every_trial_finds_the_same_best():
    out = run_example(EXAMPLES / "hyperparameter_search.py",
                      [*SMALL["hyperparameter_search"], "--quorum", "1"])
    assert progress_scores(out) == TRIAL_SCORES
    assert "cancelled 0 straggling trials; the best of 16:" in out
    assert f"best: {json.dumps(BEST_TRIAL)}" in out


RAY_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_DEDUP_LOGS": "0"}
"""For the Ray helper and the examples that attach to it: Ray 2.5x's default token
authentication would want the token shared between them (it stays on this machine:
Ray binds to the machine's address, which it prefers to 127.0.0.1)."""

RAY_HEAD = """
    import sys
    import ray

    ray.init(num_cpus=2, include_dashboard=False)
    print(ray.get_runtime_context().gcs_address, flush=True)
    sys.stdin.read()  # until the test closes it
    ray.shutdown()
"""


@pytest.fixture(scope="module")
def ray_address() -> Iterator[str]:
    """A one-node Ray instance of 2 CPUs for the module (started once: Ray takes seconds
    to start), held by a helper process; examples attach to it with --address. Started by
    `ray.init` so that it is not recorded as this machine's current cluster."""
    pytest.importorskip("ray", reason="Ray is not installed (pip install '.[bench]')")
    head = subprocess.Popen([sys.executable, "-c", textwrap.dedent(RAY_HEAD)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True,
                            env={**os.environ, **RAY_ENV})
    try:
        address = head.stdout.readline().strip()
        assert address, "the Ray helper did not start"
        yield address
    finally:
        head.stdin.close()
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            head.kill()
            head.wait(timeout=30)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_example_runs_unchanged_on_ray(name: str, ray_address: str, tmp_path: Path):
    """Only the import line differs; `--address` goes to ray.init as it is."""
    source = (EXAMPLES / f"{name}.py").read_text()
    swapped = tmp_path / f"{name}.py"
    swapped.write_text(source.replace(IMPORT_LINE, "import ray as px\n"))
    out = run_example(swapped, [*SMALL[name], "--address", ray_address],
                      env=RAY_ENV, timeout=180)
    check(name, out)
