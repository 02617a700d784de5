"""`ClusterService` in one process over real TCP on 127.0.0.1: load and resources reach the
other members, the router hands push-pulls to gossip and drops anything else with one log
line, and a cancelled service leaves gracefully (peers record "left", not "dead")."""

from __future__ import annotations

import dataclasses
import logging

import trio

from p2pexec.cluster import ClusterService
from p2pexec.config import ClusterConfig
from p2pexec.gossip.config import GossipConfig
from p2pexec.gossip.messages import Ping
from p2pexec.net.codec import Codec, message
from p2pexec.net.tcp import TcpTransport

TOKEN = "service-test-token-0123456789"
FAST = dataclasses.replace(GossipConfig.local(), load_update_interval=0.05)


def service(tmp_path, name: str, load: list[tuple[int, int]], peers=(),
            resources: dict[str, float] | None = None) -> ClusterService:
    """A service whose load sampler returns `load[-1]` (the test appends new samples)."""
    config = ClusterConfig(token=TOKEN, data_dir=tmp_path / name, host="127.0.0.1", port=0,
                           peers=tuple(peers), mdns=False, gossip=FAST,
                           first_message_timeout=0.5)
    return ClusterService(config, name, resources or {"CPU": 1.0}, lambda: load[-1])


def by_name(svc: ClusterService) -> dict[str, dict]:
    return {m["name"]: m for m in svc.members()}


async def start_client(nursery: trio.Nursery, tmp_path) -> TcpTransport:
    """A transport that only dials out (connections to it are closed at once)."""
    client = TcpTransport.create(tmp_path / "client", TOKEN, host="127.0.0.1")

    async def refuse(conn) -> None:
        await conn.aclose()

    await nursery.start(client.serve, refuse)
    return client


async def until(cond, limit: float = 20.0) -> None:
    with trio.fail_after(limit):
        while not cond():
            await trio.sleep(0.05)


async def test_load_and_resources_spread_and_a_cancelled_service_leaves(tmp_path):
    load_a: list[tuple[int, int]] = [(0, 0)]
    a = service(tmp_path, "a", load_a, resources={"CPU": 4.0, "gpu": 1.0})
    async with trio.open_nursery() as nursery:
        await nursery.start(a.run)
        b = service(tmp_path, "b", [(0, 0)], peers=[a.address])
        b_scope = trio.CancelScope()

        async def run_b(*, task_status=trio.TASK_STATUS_IGNORED):
            with b_scope:
                await b.run(task_status=task_status)

        await nursery.start(run_b)
        await until(lambda: {n: m["state"] for n, m in by_name(b).items()} ==
                    {"a": "alive", "b": "alive"})
        assert by_name(b)["a"]["resources"] == {"CPU": 4.0, "gpu": 1.0}
        assert by_name(b)["a"]["address"] == f"127.0.0.1:{a.address[1]}"

        load_a.append((7, 3))
        await until(lambda: by_name(b)["a"]["load"] == {"queue_length": 7, "running_tasks": 3})

        b_scope.cancel()  # what Ctrl-C does to the node's nursery
        await until(lambda: by_name(a)["b"]["state"] == "left", 10.0)
        nursery.cancel_scope.cancel()


async def test_router_drops_connections_that_do_not_start_with_a_push_pull(tmp_path, caplog):
    a = service(tmp_path, "a", [(0, 0)])
    async with trio.open_nursery() as nursery:
        await nursery.start(a.run)
        client = await start_client(nursery, tmp_path)
        with caplog.at_level(logging.WARNING, logger="p2pexec.net"):
            conn = await client.connect(a.address)
            await conn.send(Codec().encode(Ping(1, a.node_id, client.local.node_id)))
            await until(lambda: "accepts" in caplog.text, 5.0)
            await client.connect(a.address)
            await until(lambda: "sent nothing" in caplog.text, 5.0)
        lines = [r.getMessage() for r in caplog.records if "dropped peer" in r.getMessage()]
        peer = client.local.node_id.short
        assert [line.split(": ", 1)[1] for line in lines] == [
            "opened a connection with Ping, which no service on this node accepts",
            "sent nothing for 0.5 s after connecting",
        ]
        assert all(f"(node {peer})" in line for line in lines)
        await client.aclose()
        nursery.cancel_scope.cancel()


@message(961)
@dataclasses.dataclass(frozen=True, slots=True)
class Greeting:
    text: str


async def test_streams_are_routed_by_the_codec_range_of_their_first_message(tmp_path):
    a = service(tmp_path, "a", [(0, 0)])
    served: list[tuple[str, str]] = []

    async def greetings(conn, first) -> None:
        served.append((first.text, Codec().decode(await conn.receive()).text))
        await conn.send(Codec().encode(Greeting("welcome")))

    a.add_stream_service(range(960, 970), greetings)
    async with trio.open_nursery() as nursery:
        await nursery.start(a.run)
        client = await start_client(nursery, tmp_path)
        conn = await client.connect(a.address)
        await conn.send_many([Codec().encode(Greeting("hello")),
                              Codec().encode(Greeting("again"))])
        assert Codec().decode(await conn.receive()) == Greeting("welcome")
        assert served == [("hello", "again")]
        await client.aclose()
        nursery.cancel_scope.cancel()


def test_each_start_with_the_same_data_dir_is_a_new_life(tmp_path, caplog):
    """The key stays, so the node id does: the life counted beside it is what tells
    peers that the process restarted."""
    lives = [service(tmp_path, "a", [(0, 0)]).life for _ in range(3)]
    assert lives == [0, 1, 2]
    (tmp_path / "a" / "life").write_text("garbage")
    with caplog.at_level(logging.WARNING, logger="p2pexec"):
        assert service(tmp_path, "a", [(0, 0)]).life == 0
    assert "counting this node's restarts from 0 again" in caplog.text
    assert service(tmp_path, "a", [(0, 0)]).life == 1
