"""The worker pool on its own: sizes, extra workers, code shipping, prefetch depth."""

from p2pexec.exec.config import ExecConfig
from p2pexec.exec.instructions import StartWorker
from p2pexec.exec.pool import WorkerPool


def test_pool_starts_one_worker_per_cpu_and_replaces_a_lost_one():
    out = []
    pool = WorkerPool(ExecConfig(num_cpus=2), 2.0, out)
    pool.start_pool()
    pool.start_worker(b"actor")
    assert out == [StartWorker(1), StartWorker(2), StartWorker(3, b"actor")]
    del pool.workers[1]
    pool.replace_lost()
    pool.replace_lost()  # back to two pool workers: nothing more
    assert out[3:] == [StartWorker(4)]


def test_extra_workers_start_one_at_a_time_up_to_the_limit():
    out = []
    pool = WorkerPool(ExecConfig(num_cpus=1, max_extra_workers=1), 1.0, out)
    pool.start_pool()
    pool.maybe_start_extra()
    assert out == [StartWorker(1)]  # worker 1 is still starting
    pool.workers[1].ready = True
    pool.maybe_start_extra()
    pool.workers[2].ready = True
    pool.maybe_start_extra()
    assert out == [StartWorker(1), StartWorker(2)]


def test_code_ships_once_per_worker_and_depth_follows_run_time():
    pool = WorkerPool(ExecConfig(num_cpus=1, prefetch_seconds=0.002, max_prefetch=64), 1.0, [])
    pool.start_pool()
    pool.register_code(b"f", b"pickled f")
    worker = pool.workers[1]
    assert [pool.code_to_ship(worker, b"f"), pool.code_to_ship(worker, b"f")] == [
        b"pickled f", None]
    assert pool.depth(b"f") == 1  # never measured
    pool.record_duration(b"f", 1e-3)
    assert pool.depth(b"f") == 2
    pool.record_duration(b"g", 1e-6)
    assert pool.depth(b"g") == 64
