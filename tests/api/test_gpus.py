"""GPUs through the public API on a node that declares two (no GPU needed): the ids each
task and actor is given, in `px.get_gpu_ids()` and `CUDA_VISIBLE_DEVICES`."""

import json

import pytest
from fresh_interpreter import run_python

import p2pexec as px

GPUS = """
    import json, os, tempfile, time
    import p2pexec as px

    px.init(address="local", num_cpus=2, num_gpus=2)

    def rendezvous(directory, count):
        # both tasks of a pair are running before either returns
        open(os.path.join(directory, str(os.getpid())), "w").close()
        deadline = time.monotonic() + 30
        while len(os.listdir(directory)) < count and time.monotonic() < deadline:
            time.sleep(0.01)

    def seen():
        return os.environ.get("CUDA_VISIBLE_DEVICES"), px.get_gpu_ids(), os.getpid()

    @px.remote(num_gpus=1)
    def one_gpu(directory=None):
        if directory:
            rendezvous(directory, 2)
        return seen()

    @px.remote
    def cpu_only(delay=0.0):
        time.sleep(delay)
        return seen()

    @px.remote(num_cpus=2, num_gpus=1)
    def parent():
        # the child cannot start elsewhere (this task holds both CPUs), so it runs on
        # this worker's stack while the parent waits: the parent's GPU comes back after
        before = seen()
        child = px.get(cpu_only.remote())
        return before, child, seen()

    @px.remote(num_gpus=1)
    class Holder:
        def ids(self):
            context = px.get_runtime_context()
            return seen()[:2] + (context.gpu_ids, context.get_accelerator_ids())

    out = {"driver": [px.get_gpu_ids(), px.get_runtime_context().gpu_ids],
           "resources": px.cluster_resources()}
    out["single"] = px.get(one_gpu.remote(), timeout=60)
    pair = tempfile.mkdtemp()
    out["pair"] = px.get([one_gpu.remote(pair), one_gpu.remote(pair)], timeout=60)
    halves = tempfile.mkdtemp()
    out["halves"] = px.get([one_gpu.options(num_gpus=0.5).remote(halves),
                            one_gpu.options(num_gpus=0.5).remote(halves)], timeout=60)
    out["both"] = px.get(one_gpu.options(num_gpus=2).remote(), timeout=60)
    out["after"] = px.get([cpu_only.remote(0.02) for _ in range(20)], timeout=60)
    out["nested"] = px.get(parent.remote(), timeout=60)
    holder = Holder.remote()
    out["actor"] = [px.get(holder.ids.remote(), timeout=60) for _ in range(3)]
    out["beside_actor"] = px.get(one_gpu.remote(), timeout=60)[:2]
    for name, options in (("too_many_gpus", {"num_gpus": 3}), ("too_many_cpus", {"num_cpus": 3})):
        try:
            px.get(cpu_only.options(**options).remote(), timeout=1)
            out[name] = "ran"
        except px.GetTimeoutError:
            out[name] = "waits"
    px.shutdown()
    print(json.dumps(out))
"""


def test_tasks_and_actors_see_the_gpus_the_node_gave_them():
    out = json.loads(run_python(GPUS, timeout=180).strip().splitlines()[-1])
    assert out["driver"] == [[], []]
    assert out["resources"] == {"CPU": 2.0, "GPU": 2.0}
    visible, ids, _pid = out["single"]
    assert len(ids) == 1 and visible == str(ids[0])
    pair = sorted(tuple(task[:2]) for task in out["pair"])  # at the same time: one each
    assert pair == [("0", [0]), ("1", [1])]
    assert [task[:2] for task in out["halves"]] == [["0", [0]], ["0", [0]]]  # one shared
    assert out["both"][:2] == ["0,1", [0, 1]]
    gpu_workers = {task[2] for task in out["pair"]}
    assert {task[2] for task in out["after"]} == gpu_workers  # the same processes, where
    assert all(task[:2] == ["", []] for task in out["after"])  # no GPU is left visible
    before, child, after = out["nested"]
    assert child[2] == before[2] and child[:2] == ["", []]
    assert before[:2] == after[:2] and len(before[1]) == 1 and before[0] == str(before[1][0])
    first = out["actor"][0]
    assert len(first[1]) == 1 and first[0] == str(first[1][0]) and first[2] == first[1]
    assert first[3] == {"GPU": [first[0]]}
    assert out["actor"] == [first] * 3  # its GPU for its life
    assert out["beside_actor"] == [str(1 - first[1][0]), [1 - first[1][0]]]
    assert out["too_many_gpus"] == out["too_many_cpus"] == "waits"  # as for CPUs: a
    # warning, and it waits for a node that has them


def test_gpu_demands_are_checked_at_submission():
    def f():
        return 1

    px.remote(num_gpus=0.25)(f)
    px.remote(num_gpus=2)(f)
    with pytest.raises(px.LocalUsageError, match=r"num_gpus=1\.5: above 1, GPUs come whole"):
        px.remote(num_gpus=1.5)(f)
    with pytest.raises(px.LocalUsageError, match="give GPUs with num_gpus="):
        px.remote(resources={"GPU": 1})(f)
    with pytest.raises(px.LocalUsageError, match="give GPUs with num_gpus="):
        px.remote(f).options(resources={"GPU": 1})
    with pytest.raises(px.LocalUsageError, match="reserved"):
        px.remote(resources={"_gpu:0": 1})(f)

    class Actor:
        pass

    with pytest.raises(px.LocalUsageError, match="num_gpus must be a number"):
        px.remote(num_gpus=-1)(Actor)
