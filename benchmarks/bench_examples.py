"""The programs of examples/ at full size on p2pexec and on Ray, one node and three.

Run: `python benchmarks/bench_examples.py [--repeats 3] [--examples a,b] [--nodes 1,3]`.
Each example runs unchanged, as a user runs it, in a process of its own; for Ray it is
the same file with its import line swapped for `import ray as px`. Configurations:

* 1 node: p2pexec embeds its node (`python examples/X.py`, with $P2PEXEC_DATA_DIR an
  empty dir so that no running node is picked up); Ray's `ray.init()` starts a local
  instance ($RAY_ADDRESS=local). Both take this machine's CPUs (2).
* 3 nodes: three `p2pexec join` processes on 127.0.0.1 with 1 CPU each
  (`p2pexec.testing.processes.LocalCluster`), the example attached to the first with
  `--address <its data dir>`; Ray: `ray.cluster_utils.Cluster` with three raylets of 1
  CPU each (1 GiB object store each), the example attached with `--address`. A fresh
  cluster for every run; its start is not counted.

Figures: the example's own time from `px.init()` returning to its end (the work), the
median of `--repeats` runs with the spread (min-max), and, beside it, the median time
`px.init()` took. The runs of one example alternate between the systems, so a busy
spell on the machine disturbs both. Ray columns show "n/a" unless Ray is installed
(`pip install '.[bench]'`). With `--floor`, each repeat also runs each example once on
no framework (`example_floor.py`: its own code, serially, on a virtual clock of 2
cores, OMP_NUM_THREADS=1, the oldest trial's tasks first), and the table shows that
time, what a framework with no overhead at all would take on this machine's 2 cores, and
Ray's time over it, about the most p2pexec could gain on Ray (the same for one node and
three: 2 cores either way; for the examples whose path depends on timing, on the path
that schedule gives). On stderr, each run's last line (rollouts: its number of updates).
Target (issue 12): p2pexec at least 2x faster than Ray on each example in the same
configuration. The environment is passed on to every process:
`OMP_NUM_THREADS=1 python benchmarks/bench_examples.py` measures with BLAS on one thread
per process (Ray sets that in its workers itself; p2pexec does not).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

from _common import median, render_table

from p2pexec.testing.processes import LocalCluster

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ("hyperparameter_search", "parameter_server", "rollouts")
IMPORT_LINE = "import p2pexec as px\n"
DONE = re.compile(r"^OK: .*; ([\d.]+) s in all, ([\d.]+) s of it in px\.init$", re.M)
RAY_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_DEDUP_LOGS": "0"}
"""Ray 2.5x asks drivers attaching to a cluster for its token unless this is set."""

RAY_CLUSTER = """
import sys
from ray.cluster_utils import Cluster

cluster = Cluster()
for _ in range(int(sys.argv[1])):
    cluster.add_node(num_cpus=1, object_store_memory=2**30)
cluster.wait_for_nodes()
print(cluster.address, flush=True)
sys.stdin.read()  # until the benchmark closes it
cluster.shutdown()
"""


def ray_installed() -> bool:
    try:
        import ray  # noqa: F401
    except ImportError:
        return False
    return True


def run_example(path: Path, args: list[str], env: dict[str, str]
                ) -> tuple[float, float, str]:
    """(seconds of work after px.init, seconds in px.init, its last line) of one checked
    run."""
    done = subprocess.run([sys.executable, str(path), *args], capture_output=True, text=True,
                          timeout=1800, env={**os.environ, **env}, cwd=ROOT)
    match = DONE.search(done.stdout)
    if done.returncode != 0 or match is None:
        raise RuntimeError(f"{path.name} {' '.join(args)} failed:\n{done.stdout}\n"
                           f"{done.stderr[-3000:]}")
    total, init = float(match.group(1)), float(match.group(2))
    return total - init, init, match.group(0)


def p2pexec_run(name: str, nodes: int) -> tuple[float, float, str]:
    path = ROOT / "examples" / f"{name}.py"
    if nodes == 1:
        with tempfile.TemporaryDirectory(prefix="p2pexec-bench-examples-") as empty:
            return run_example(path, [], {"P2PEXEC_DATA_DIR": empty})
    with LocalCluster(nodes, cpus=1, prefix="p2pexec-bench-examples-") as cluster:
        return run_example(path, ["--address", str(cluster.data_dirs[0])], {})


def ray_run(name: str, nodes: int, swapped: Path) -> tuple[float, float, str]:
    path = swapped / f"{name}.py"
    if nodes == 1:
        return run_example(path, [], {**RAY_ENV, "RAY_ADDRESS": "local"})
    helper = subprocess.Popen([sys.executable, "-c", textwrap.dedent(RAY_CLUSTER), str(nodes)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True,
                              env={**os.environ, **RAY_ENV})
    try:
        address = helper.stdout.readline().strip()
        if not address:
            raise RuntimeError("the Ray cluster did not start")
        return run_example(path, ["--address", address], RAY_ENV)
    finally:
        helper.stdin.close()
        try:
            helper.wait(timeout=120)
        except subprocess.TimeoutExpired:
            helper.kill()
            helper.wait(timeout=30)


def floor_run(name: str) -> tuple[float, str]:
    """(the example's time on no framework, on 2 virtual cores, its last line)."""
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "example_floor.py"),
                           "--examples", name, "--order", "root", "--json"],
                          capture_output=True, text=True, timeout=1800, cwd=ROOT,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    if done.returncode != 0:
        raise RuntimeError(f"example_floor.py {name} failed:\n{done.stderr[-3000:]}")
    figures = json.loads(done.stdout.splitlines()[-1])
    return figures["ideal"], figures["last"]


def swap_imports(directory: Path) -> Path:
    """The examples with their one import line swapped for Ray's, in `directory`."""
    for name in EXAMPLES:
        source = (ROOT / "examples" / f"{name}.py").read_text()
        assert source.count(IMPORT_LINE) == 1, name
        (directory / f"{name}.py").write_text(source.replace(IMPORT_LINE, "import ray as px\n"))
    return directory


def spread(values: list[float]) -> str:
    return f"{median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--examples", default=",".join(EXAMPLES))
    parser.add_argument("--nodes", default="1,3")
    parser.add_argument("--floor", action="store_true",
                        help="add each example's time on no framework (example_floor.py)")
    args = parser.parse_args()
    names = args.examples.split(",")
    sizes = [int(n) for n in args.nodes.split(",")]
    has_ray = ray_installed()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-examples-ray-") as tmp:
        swapped = swap_imports(Path(tmp))
        for name in names:
            floors: list[float] = []  # the same for every number of nodes
            for nodes in sizes:
                ours: list[tuple[float, float, str]] = []
                theirs: list[tuple[float, float, str]] = []
                for repeat in range(args.repeats):
                    ours.append(p2pexec_run(name, nodes))
                    if has_ray:
                        theirs.append(ray_run(name, nodes, swapped))
                    lines = [f"  p2pexec: {ours[-1][2]}"]
                    if theirs:
                        lines.append(f"  ray: {theirs[-1][2]}")
                    if args.floor and len(floors) < args.repeats:
                        ideal, last = floor_run(name)
                        floors.append(ideal)
                        lines.append(f"  floor {ideal:.2f} s: {last}")
                    print(f"{name} x{nodes} run {repeat + 1}: work p2pexec {ours[-1][0]:.2f} s"
                          + (f", ray {theirs[-1][0]:.2f} s" if theirs else ""),
                          *lines, sep="\n", file=sys.stderr, flush=True)
                work = [w for w, _, _ in ours]
                row = [name, str(nodes), spread(work)]
                if theirs:
                    ray_work = [w for w, _, _ in theirs]
                    row += [spread(ray_work), f"{median(ray_work) / median(work):.2f}"]
                else:
                    row += ["n/a", "n/a"]
                if args.floor:
                    row.append(spread(floors))
                    row.append(f"{median(ray_work) / median(floors):.2f}" if theirs else "n/a")
                row.append(f"{median([i for _, i, _ in ours]):.2f}")
                row.append(f"{median([i for _, i, _ in theirs]):.2f}" if theirs else "n/a")
                rows.append(row)
    print(render_table(["example", "nodes", "p2pexec s (range)", "ray s (range)",
                        "ray / p2pexec",
                        *(["floor s (range)", "ray / floor"] if args.floor else []),
                        "p2pexec init s", "ray init s"], rows))


if __name__ == "__main__":
    main()
