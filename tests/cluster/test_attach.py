"""Drivers attach to a running `p2pexec join` node: px.init() finds it, the whole API works
through it, several drivers share it, and a driver that goes away leaves nothing behind."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import msgpack
import pytest
from join_helpers import JoinedNode, Launcher, wait_for

from p2pexec.config import control_socket_path
from p2pexec.control import request
from p2pexec.net.security import new_token


def start_node(launcher: Launcher, name: str = "n1", cpus: int = 2) -> JoinedNode:
    return launcher.start(name, new_token(), [
        "--host", "127.0.0.1", "--port", "0", "--gossip", "local", "--no-mdns",
        "--cpus", str(cpus)]).wait_started()


def stats(node: JoinedNode) -> dict:
    return request(control_socket_path(node.data_dir), "exec_stats")


def driver(code: str, data_dir: Path | None, *args: str) -> subprocess.Popen[str]:
    """A driver script in a fresh interpreter, with $P2PEXEC_DATA_DIR set to `data_dir`
    (so a bare px.init() finds that node); the test may write to its stdin."""
    env = dict(os.environ)
    env.pop("P2PEXEC_DATA_DIR", None)
    if data_dir is not None:
        env["P2PEXEC_DATA_DIR"] = str(data_dir)
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args], env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def run_driver(code: str, data_dir: Path | None, *args: str, timeout: float = 90) -> dict:
    proc = driver(code, data_dir, *args)
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out + err
    return json.loads(out.strip().splitlines()[-1])


WHOLE_API = """
    import json, time
    import p2pexec as px
    from p2pexec.exec import context

    px.init()
    attached = type(context.runtime).__name__

    @px.remote
    def square(x):
        return x * x

    @px.remote
    def fib(n):
        return n if n < 2 else sum(px.get([fib.remote(n - 1), fib.remote(n - 2)]))

    @px.remote
    def total(xs):
        return int(sum(xs))

    @px.remote
    def slow(seconds):
        time.sleep(seconds)
        return seconds

    @px.remote
    def fail():
        raise KeyError("missing")

    @px.remote
    class Counter:
        def __init__(self, start):
            self.n = start
        def incr(self):
            self.n += 1
            return self.n

    out = {"attached": attached, "node": px.nodes()[0]["name"]}
    out["squares"] = px.get([square.remote(i) for i in range(20)])
    out["fib"] = px.get(fib.remote(12))
    big = px.put(list(range(200_000)))
    out["total"] = px.get(total.remote(big))
    counter = Counter.options(name="ctr").remote(10)
    out["calls"] = [px.get(counter.incr.remote()) for _ in range(3)]
    out["named"] = px.get(px.get_actor("ctr").incr.remote())
    ready, not_ready = px.wait([slow.remote(0.0), slow.remote(5)], num_returns=1, timeout=3)
    out["wait"] = [len(ready), len(not_ready)]
    try:
        px.get(slow.remote(5), timeout=0.3)
        out["timeout"] = "no"
    except px.GetTimeoutError:
        out["timeout"] = "GetTimeoutError"
    try:
        px.get(fail.remote())
    except KeyError as exc:
        out["error"] = [isinstance(exc, px.TaskError), "missing" in str(exc)]
    with px.Executor() as ex:
        out["executor"] = list(ex.map(abs, [-1, -2, 3]))
    import asyncio
    out["futures"] = [square.remote(6).future().result(timeout=60),
                      asyncio.run(px.get_async([square.remote(7)]))]
    px.kill(counter)
    try:
        px.get(counter.incr.remote())
    except px.ActorDiedError:
        out["killed"] = True
    out["resources"] = px.cluster_resources()["CPU"]
    out["timed"] = sum(px.get(square.remote(i), timeout=600) for i in range(50))
    print(json.dumps(out))
"""


def test_an_attached_driver_uses_the_whole_api(launcher: Launcher):
    node = start_node(launcher)
    out = run_driver(WHOLE_API, node.data_dir)
    assert out == {
        "attached": "AttachedRuntime", "node": "n1",
        "squares": [i * i for i in range(20)], "fib": 144, "total": sum(range(200_000)),
        "calls": [11, 12, 13], "named": 14, "wait": [1, 1], "timeout": "GetTimeoutError",
        "error": [True, True], "executor": [1, 2, 3], "futures": [36, [49]], "killed": True,
        "resources": 2.0, "timed": sum(i * i for i in range(50))}
    assert "driver pid" in node.log() and "attached" in node.log()
    # a get's timeout ends with its answer: none is left sleeping (each was a task till
    # its deadline: a driver's gets with a long timeout grew the node by ~90 MiB in 8 s)
    assert stats(node)["driver_timers"] == 0


def test_init_rules_local_explicit_address_and_nothing_running(launcher: Launcher,
                                                               tmp_path: Path):
    node = start_node(launcher)
    out = run_driver("""
        import json, sys
        import p2pexec as px
        from p2pexec.exec import context

        out = {}
        px.init(address="local", num_cpus=1)
        out["local"] = [type(context.runtime).__name__, px.nodes()[0]["address"]]
        px.shutdown()
        px.init(address=sys.argv[1])
        out["explicit"] = [type(context.runtime).__name__, px.nodes()[0]["name"]]
        px.shutdown()
        try:
            px.init(address=sys.argv[1], num_cpus=4)
        except px.LocalUsageError as exc:
            out["configure"] = "address='local'" in str(exc)
        try:
            px.init(address=sys.argv[2])
        except px.LocalUsageError as exc:
            out["nothing"] = [type(exc).__name__, sys.argv[2] in str(exc)]
        print(json.dumps(out))
    """, None, str(node.data_dir), str(tmp_path / "nobody"))
    assert out == {"local": ["DriverRuntime", None], "explicit": ["AttachedRuntime", "n1"],
                   "configure": True, "nothing": ["NodeNotRunning", True]}
    # with nothing running in the data dir, a bare init embeds a node
    out = run_driver("""
        import json
        import p2pexec as px
        from p2pexec.exec import context

        @px.remote
        def one():
            return 1
        print(json.dumps([px.get(one.remote()), type(context.runtime).__name__]))
    """, tmp_path / "empty")
    assert out == [1, "DriverRuntime"]


def test_two_drivers_share_objects_only_through_a_named_actor(launcher: Launcher):
    node = start_node(launcher)
    first = driver("""
        import json, time
        import p2pexec as px

        px.init()

        @px.remote
        class Shelf:
            def __init__(self):
                self.items = []
            def keep(self, items):
                self.items = items
            def give(self):
                return self.items

        shelf = Shelf.options(name="shelf", lifetime="detached").remote()
        secret = px.put("from the first driver")
        px.get(shelf.keep.remote([secret]))
        print(json.dumps(secret.hex()), flush=True)
        time.sleep(60)
    """, node.data_dir)
    secret_hex = json.loads(first.stdout.readline())
    out = run_driver("""
        import json, sys
        import p2pexec as px
        from p2pexec.exec.refs import ObjectRef

        px.init()
        (ref,) = px.get(px.get_actor("shelf").give.remote())
        out = {"handed": px.get(ref)}
        forged = ObjectRef(bytes.fromhex(sys.argv[1]))
        try:
            px.get(forged, timeout=10)
        except px.ObjectLostError:
            out["forged"] = "lost"
        print(json.dumps(out))
    """, node.data_dir, "00" * 20)
    assert out == {"handed": "from the first driver", "forged": "lost"}
    assert len(secret_hex) == 40
    first.kill()
    first.wait(timeout=10)


WORKLOAD = """
    import json, time
    import numpy as np
    import p2pexec as px

    px.init()

    @px.remote
    def work(i, block):
        time.sleep(0.05)
        return i

    @px.remote
    class Holder:
        def __init__(self, value):
            self.value = value
        def ping(self):
            return "pong"

    block = px.put(np.zeros(2_000_000))  # 16 MB: a shared-memory segment
    refs = [work.remote(i, block) for i in range(300)]
    kept = Holder.remote(block)
    named = Holder.options(name="mine").remote(1)
    detached = Holder.options(name="stays", lifetime="detached").remote(2)
    more = [px.put(np.ones(100_000) * i) for i in range(5)]
    px.get([kept.ping.remote(), named.ping.remote(), detached.ping.remote()])
    print(json.dumps("busy"), flush=True)
    time.sleep(60)
"""


def test_a_killed_driver_leaves_the_node_as_it_found_it(launcher: Launcher):
    node = start_node(launcher)
    baseline = wait_for(lambda: (s := stats(node))["pool_workers"] == 2 and s, 20)
    assert baseline["objects"] == 0 and baseline["tasks"] == 0 and baseline["actors"] == []
    segments_before = _segments((node.proc.pid,))  # named after the process that made them
    proc = driver(WORKLOAD, node.data_dir)
    pids = (node.proc.pid, proc.pid)  # (not other runs' on this machine)
    assert json.loads(proc.stdout.readline()) == "busy", proc.stderr.read()
    busy = stats(node)
    assert busy["drivers"] == 1 and busy["tasks"] > 0 and len(busy["actors"]) == 3
    assert busy["available"]["CPU"] < 2
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)

    def settled() -> dict | bool:
        now = stats(node)
        return now["tasks"] == 0 and now["drivers"] == 0 and now["actors"] == ["stays"] and now

    after = wait_for(settled, 30)
    assert after, stats(node)
    assert after["pool_workers"] == 2 and after["actor_workers"] == 1
    assert after["available"] == {"CPU": 2.0}  # the detached actor holds no CPU (num_cpus=0)
    assert after["objects"] == 0  # the detached actor lives on without any of them
    assert wait_for(lambda: _segments(pids) == segments_before, 10), _segments(pids)
    assert "driver pid" in node.log() and "detached" in node.log()


def _segments(pids: tuple[int, ...]) -> set[str]:
    """The shared-memory segments of these processes (not of other runs on the machine)."""
    prefixes = tuple(f"p2px_{pid}_" for pid in pids)
    return {name for name in os.listdir("/dev/shm") if name.startswith(prefixes)}


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM], ids=["killed", "stopped"])
def test_a_driver_whose_node_dies_gets_a_clear_error_not_a_hang(launcher: Launcher, how: int):
    node = start_node(launcher)
    proc = driver("""
        import json, time
        import p2pexec as px

        px.init()

        @px.remote
        def forever():
            time.sleep(600)

        ref = forever.remote()
        print(json.dumps("waiting"), flush=True)
        out = {}
        started = time.monotonic()
        try:
            px.get(ref)
        except px.NodeDiedError as exc:
            out["get"] = "lost the p2pexec node" in str(exc)
        out["seconds"] = time.monotonic() - started
        try:
            forever.remote()
        except px.NodeDiedError:
            out["next"] = "NodeDiedError"
        print(json.dumps(out), flush=True)
    """, node.data_dir)
    assert json.loads(proc.stdout.readline()) == "waiting"
    time.sleep(0.5)
    if how == signal.SIGKILL:
        os.killpg(node.proc.pid, signal.SIGKILL)
    else:  # a graceful stop with a driver attached ends the node cleanly
        node.signal(signal.SIGTERM)
        assert node.proc.wait(timeout=30) == 0, node.log()
        assert "Traceback" not in node.log()
    out, err = proc.communicate(timeout=30)
    result = json.loads(out.strip().splitlines()[-1])
    assert result["get"] is True and result["next"] == "NodeDiedError", err
    assert result["seconds"] < 10


def _frame(body: bytes) -> bytes:
    return len(body).to_bytes(4, "big") + body


@pytest.mark.parametrize("frame", [
    pytest.param(_frame(b"hello"), id="garbage"),
    pytest.param((2**31 - 1).to_bytes(4, "big"), id="oversized"),
    pytest.param(_frame(msgpack.packb([999, 1])), id="unknown-kind"),
    pytest.param(_frame(msgpack.packb([100, "not a map"])), id="wrong-field-type"),
])
def test_a_driver_sending_a_bad_frame_is_dropped_and_others_are_served(
        launcher: Launcher, frame: bytes):
    node = start_node(launcher, cpus=1)
    out = run_driver("""
        import json, socket, sys, time
        import p2pexec as px
        from p2pexec.exec import context

        px.init()

        @px.remote
        def one():
            return 1

        assert px.get(one.remote()) == 1
        context.runtime.link.sock.sendall(bytes.fromhex(sys.argv[1]))
        out = {}
        try:
            px.get(one.remote(), timeout=20)
        except px.NodeDiedError:
            out["dropped"] = True
        print(json.dumps(out))
    """, node.data_dir, frame.hex())
    assert out == {"dropped": True}
    assert wait_for(lambda: stats(node)["drivers"] == 0, 10)
    assert run_driver("""
        import json
        import p2pexec as px
        px.init()
        print(json.dumps(px.nodes()[0]["name"]))
    """, node.data_dir) == "n1"
    assert "sent a message the node could not handle" in node.log()


def test_a_silent_client_and_another_user_are_refused():
    if os.getuid() != 0:
        pytest.skip("needs root, to connect as another user")
    base = Path(tempfile.mkdtemp(prefix="p2px-attach-", dir="/tmp"))
    launcher = Launcher(base)
    try:
        _refuse_silent_and_foreign(launcher, start_node(launcher))
    finally:
        launcher.kill_all()
        shutil.rmtree(base, ignore_errors=True)


def _refuse_silent_and_foreign(launcher: Launcher, node: JoinedNode) -> None:
    path = control_socket_path(node.data_dir)
    silent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    silent.connect(str(path))
    # another user: make the socket reachable past the file modes, then connect as nobody
    os.chmod(node.data_dir.parent, 0o711)
    os.chmod(node.data_dir, 0o711)
    os.chmod(path, 0o666)
    nobody = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        import os, socket
        os.setgid(65534); os.setuid(65534)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect({str(path)!r})
        s.settimeout(10)
        print(s.recv(10) == b"")
    """)], capture_output=True, text=True, timeout=30)
    assert nobody.stdout.strip() == "True", nobody.stderr
    assert wait_for(lambda: "refused a client of uid 65534" in node.log(), 10)
    silent.settimeout(20)
    assert silent.recv(10) == b""  # dropped after FIRST_FRAME_TIMEOUT
    assert "sent nothing for 10 s" in node.log()
    assert stats(node)["drivers"] == 0


def test_the_api_suite_passes_through_an_attached_driver(launcher: Launcher, tmp_path: Path):
    """Every test of tests/api, run by a driver attached to a `p2pexec join` node with the
    resources the embedded fixture has (two CPUs and a gpu)."""
    node = launcher.start("api", new_token(), [
        "--host", "127.0.0.1", "--port", "0", "--gossip", "local", "--no-mdns", "--cpus", "2",
        "--resources", "gpu=1"]).wait_started()
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "P2PEXEC_TEST_ATTACH": str(node.data_dir),
           "P2PEXEC_DATA_DIR": str(tmp_path / "nothing-here")}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           str(root / "tests" / "api")], cwd=root, env=env,
                          capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-2000:]
    assert " passed" in done.stdout.splitlines()[-1]


SHOUTING_DRIVER = """
    import sys, time
    import p2pexec as px

    tag, wants = sys.argv[1], sys.argv[2] == "log"
    px.init(log_to_driver=wants)

    @px.remote
    def shout(tag, i):
        time.sleep(0.05)
        print(tag, i)
        print(tag, "error", i, file=sys.stderr)
        return i

    assert px.get([shout.remote(tag, i) for i in range(10)]) == list(range(10))
    sys.stdout.write(f"done {tag}\\n")  # one write: task output is printed meanwhile
"""


def test_attached_drivers_each_get_only_their_own_tasks_output(launcher: Launcher):
    node = start_node(launcher)
    procs = {tag: driver(SHOUTING_DRIVER, node.data_dir, tag, wants)
             for tag, wants in (("first", "log"), ("second", "log"), ("quiet", "no"))}
    outputs = {tag: proc.communicate(timeout=90) for tag, proc in procs.items()}
    for tag, proc in procs.items():
        assert proc.returncode == 0, outputs[tag]
    for tag in ("first", "second"):
        out, err = outputs[tag]
        shown = sorted(re.findall(r"^\(shout pid=\d+\) (.*)$", out, re.MULTILINE))
        assert shown == sorted(f"{tag} {i}" for i in range(10)), out
        errors = re.findall(r"^\(shout pid=\d+\) (.*)$", err, re.MULTILINE)
        assert sorted(errors) == sorted(f"{tag} error {i}" for i in range(10)), err
    assert outputs["quiet"][0] == "done quiet\n"
    assert "quiet" not in outputs["quiet"][1]
    # what no driver takes, the node prints itself
    assert wait_for(lambda: len(re.findall(r"\(shout pid=\d+\) quiet \d", node.log())) == 10,
                    10), node.log()
