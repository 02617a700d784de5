"""`scheduling_strategy=` on one node: bad values are refused where they are written,
every strategy that names this node (or none) runs here, and hard affinity to another
node fails clearly. Across nodes: tests/mesh/test_strategies.py and
tests/cluster/test_mesh_processes.py."""

import pytest

import p2pexec as px
from p2pexec.util.scheduling_strategies import NodeAffinitySchedulingStrategy

pytestmark = pytest.mark.usefixtures("cluster")

ELSEWHERE = "ab" * 32


@px.remote
def where():
    return px.get_runtime_context().get_node_id()


@px.remote
class Where:
    def node(self):
        return px.get_runtime_context().get_node_id()


def test_every_strategy_that_allows_this_node_runs_here():
    me = px.get_runtime_context().get_node_id()
    strategies = ["DEFAULT", "SPREAD", None, NodeAffinitySchedulingStrategy(me, soft=False),
                  NodeAffinitySchedulingStrategy(me, soft=True),
                  NodeAffinitySchedulingStrategy(ELSEWHERE, soft=True)]
    refs = [where.options(scheduling_strategy=s).remote() for s in strategies]
    assert px.get(refs, timeout=30) == [me] * len(strategies)
    actors = [Where.options(scheduling_strategy=s).remote() for s in strategies]
    assert px.get([a.node.remote() for a in actors], timeout=30) == [me] * len(strategies)


def test_hard_affinity_to_another_node_fails_saying_why():
    strategy = NodeAffinitySchedulingStrategy(ELSEWHERE, soft=False)
    # (alone, or attached to a node of a cluster: tests/cluster/test_attach.py)
    with pytest.raises(px.TaskUnschedulableError,
                       match=f"node {ELSEWHERE} is not (this node|a live member)"):
        px.get(where.options(scheduling_strategy=strategy).remote(), timeout=30)
    actor = Where.options(scheduling_strategy=strategy).remote()
    with pytest.raises(px.ActorDiedError, match="cannot be scheduled"):
        px.get(actor.node.remote(), timeout=30)


@pytest.mark.parametrize("bad", ["spread", "PACK", 3, NodeAffinitySchedulingStrategy])
def test_a_bad_strategy_is_refused_at_decoration_and_options(bad):
    with pytest.raises(px.LocalUsageError, match="scheduling_strategy must be"):
        px.remote(scheduling_strategy=bad)(lambda: 1)
    with pytest.raises(px.LocalUsageError, match="scheduling_strategy must be"):
        where.options(scheduling_strategy=bad)
    with pytest.raises(px.LocalUsageError, match="scheduling_strategy must be"):
        Where.options(scheduling_strategy=bad)


@pytest.mark.parametrize("node_id, soft", [("abc", True), ("zz" * 32, False),
                                           (b"\x01" * 32, True), (ELSEWHERE, 1)])
def test_a_bad_node_affinity_is_refused_when_made(node_id, soft):
    with pytest.raises(px.LocalUsageError, match="NodeAffinitySchedulingStrategy"):
        NodeAffinitySchedulingStrategy(node_id, soft)
