"""Starting and stopping the embedded node, in fresh interpreters."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from fresh_interpreter import run_python

PIDS_SCRIPT = textwrap.dedent("""
    import os, sys, time
    import p2pexec as px

    @px.remote
    def pid():
        time.sleep(0.05)
        return os.getpid()

    @px.remote
    class Holder:
        def pid(self):
            return os.getpid()

    holder = Holder.remote()
    pids = set(px.get([pid.remote() for _ in range(8)])) | {px.get(holder.pid.remote())}
    print(" ".join(map(str, sorted(pids))), flush=True)
    if sys.argv[1] == "hang":
        time.sleep(60)
""")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie still answers kill(0); read its state
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _wait_gone(pids: list[int], seconds: float = 10.0) -> list[int]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        alive = [pid for pid in pids if _alive(pid)]
        if not alive:
            return []
        time.sleep(0.05)
    return [pid for pid in pids if _alive(pid)]


def _start(mode: str) -> tuple[subprocess.Popen, list[int]]:
    process = subprocess.Popen([sys.executable, "-c", PIDS_SCRIPT, mode],
                               stdout=subprocess.PIPE, text=True)
    line = process.stdout.readline()
    pids = [int(word) for word in line.split()]
    assert len(pids) >= 2, line
    return process, pids


def test_implicit_init_and_exit_without_shutdown_leaves_no_workers():
    process, pids = _start("exit")
    assert process.wait(timeout=60) == 0
    assert _wait_gone(pids) == []


def test_killed_driver_leaves_no_orphan_workers():
    process, pids = _start("hang")
    try:
        assert all(_alive(pid) for pid in pids)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
        assert _wait_gone(pids) == []
    finally:
        if process.poll() is None:
            process.kill()


@pytest.mark.usefixtures("cluster")
def test_dropping_refs_frees_objects_and_shared_memory():
    import numpy as np

    import p2pexec as px
    from p2pexec.exec import context, shm

    prefix = context.runtime.segment_name(b"")  # segments are named after their node's pid

    def segments() -> set[str]:
        return {name for name in os.listdir(shm.segment_dir()) if name.startswith(prefix)}

    before = segments()
    refs = [px.put(np.full(300_000, i, dtype=np.int64)) for i in range(5)]
    assert len(segments() - before) == 5
    assert [int(px.get(ref)[0]) for ref in refs] == [0, 1, 2, 3, 4]
    del refs
    deadline = time.monotonic() + 5
    while segments() - before and time.monotonic() < deadline:
        time.sleep(0.02)
    assert segments() - before == set()


def test_shutdown_then_init_again():
    script = textwrap.dedent("""
        import p2pexec as px
        px.init(num_cpus=1)
        @px.remote
        def one():
            return 1
        assert px.get(one.remote()) == 1
        px.shutdown()
        assert not px.is_initialized()
        px.init(num_cpus=1)
        assert px.get(one.remote()) == 1
        try:
            px.init()
        except px.LocalUsageError:
            print("reinit refused")
        px.shutdown()
    """)
    assert run_python(script).strip() == "reinit refused"


def test_shutdown_right_after_work_leaves_no_shared_memory():
    script = textwrap.dedent("""
        import os
        import numpy as np
        import p2pexec as px
        from p2pexec.exec import shm
        for cycle in range(2):
            px.init(num_cpus=2)
            @px.remote
            def double(a):
                return a * 2
            refs = [px.put(np.full(200_000, i)) for i in range(10)]
            results = px.get([double.remote(r) for r in refs])
            del refs, results
            px.shutdown()  # at once: frees still queued must happen anyway
        mine = [n for n in os.listdir(shm.segment_dir())
                if n.startswith(f"{shm.PREFIX}_{os.getpid()}_")]
        print(len(mine))
    """)
    assert run_python(script, timeout=120).strip() == "0"
