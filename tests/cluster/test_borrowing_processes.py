"""Refs to objects another node owns, between drivers on real `p2pexec join` processes:
small values and pending results read across nodes, the owner keeping what a borrower
holds, every store empty once nobody holds anything, and OwnerDiedError (not a hang)
when the owner is killed."""

from __future__ import annotations

import contextlib
import json
import signal
from collections.abc import Iterator

from join_helpers import Launcher, wait_for
from test_attach import driver, stats
from test_object_transfer import three_nodes

OWNER = """
    import json, pickle, sys, time
    import p2pexec as px

    px.init()

    @px.remote
    def slow(seconds):
        time.sleep(seconds)
        return {"slept": seconds}

    small = px.put({"weights": list(range(10))})
    outer = px.put(["a ref inside a value:", small])
    pending = slow.remote(float(sys.argv[1]))
    print(json.dumps({name: pickle.dumps(ref).hex() for name, ref in
                      (("small", small), ("outer", outer), ("pending", pending))}),
          flush=True)
    sys.stdin.readline()  # the borrower holds them now: let go of ours
    del small, outer, pending
    print(json.dumps("dropped"), flush=True)
    sys.stdin.readline()
"""

BORROWER = """
    import json, pickle, sys
    import p2pexec as px

    px.init()
    refs = {name: pickle.loads(bytes.fromhex(ref)) for name, ref in
            json.loads(sys.argv[1]).items()}
    label, inner = px.get(refs["outer"], timeout=30)
    print(json.dumps({"small": px.get(refs["small"], timeout=30),
                      "inner": px.get(inner, timeout=30), "label": label}), flush=True)
    sys.stdin.readline()  # the owner's driver has let go
    try:
        print(json.dumps({"again": px.get(inner, timeout=30),
                          "pending": px.get(refs["pending"], timeout=60)}), flush=True)
    except px.P2PExecError as exc:
        print(json.dumps({"error": type(exc).__name__, "text": str(exc)}), flush=True)
"""


@contextlib.contextmanager
def owner_and_borrower(launcher: Launcher, task_seconds: str) -> Iterator[tuple]:
    """Three join nodes; the OWNER driver on A (its pending task sleeps `task_seconds`)
    and the BORROWER driver on B, which has read its first values; both killed after."""
    a, b, _c = three_nodes(launcher)
    owner = driver(OWNER, a.data_dir, task_seconds)
    borrower = None
    try:
        refs = owner.stdout.readline()
        assert refs, owner.communicate(timeout=10)
        borrower = driver(BORROWER, b.data_dir, refs)
        first = json.loads(borrower.stdout.readline() or "null")
        assert first, borrower.stderr.read()
        yield a, b, owner, borrower, first
    finally:
        for proc in (owner, borrower):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()


def test_small_objects_and_pending_results_are_borrowed_across_nodes(launcher: Launcher):
    with owner_and_borrower(launcher, "2") as (a, b, owner, borrower, first):
        assert first == {"small": {"weights": list(range(10))},
                         "inner": {"weights": list(range(10))},
                         "label": "a ref inside a value:"}
        owner.stdin.write("\n")
        owner.stdin.flush()
        assert json.loads(owner.stdout.readline()) == "dropped"
        borrower.stdin.write("\n")
        borrower.stdin.flush()
        out, err = borrower.communicate(timeout=90)
        assert json.loads(out) == {"again": {"weights": list(range(10))},
                                   "pending": {"slept": 2.0}}, err
        # nobody holds anything now: both stores empty (the owner's driver is still
        # attached, so nothing was freed by its leaving)
        empty = {"objects": 0, "store_bytes": 0}
        for node in (a, b):
            assert wait_for(lambda node=node: {k: stats(node)[k] for k in empty} == empty,
                            10), (node.name, stats(node))
        assert owner.poll() is None


def test_a_killed_owners_pending_result_fails_with_owner_died(launcher: Launcher):
    with owner_and_borrower(launcher, "120") as (a, _b, _owner, borrower, first):
        assert "small" in first
        a.proc.send_signal(signal.SIGKILL)
        borrower.stdin.write("\n")
        borrower.stdin.flush()
        out, err = borrower.communicate(timeout=90)
        answer = json.loads(out)
        # the pending result, whose owner died, fails instead of waiting
        assert answer["error"] == "OwnerDiedError", (answer, err)
        assert "died or left" in answer["text"]
