"""Node keys on disk, the token and what is derived from it, sealed datagrams."""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from p2pexec.errors import AuthenticationError, LocalProtocolError, LocalUsageError
from p2pexec.ids import NodeId
from p2pexec.net.config import CodecLimits, NetConfig
from p2pexec.net.security import (
    KEY_FILE,
    ClusterKeys,
    DatagramSealer,
    NodeIdentity,
    new_token,
    resolve_token,
)
from p2pexec.net.tcp import TcpTransport

TOKEN = "test-token-0123456789abcdef"


def test_key_is_created_private_and_reloaded_with_the_same_id(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    first = NodeIdentity.load_or_create(data_dir)
    assert stat.S_IMODE((data_dir / KEY_FILE).stat().st_mode) == 0o600
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    again = NodeIdentity.load_or_create(data_dir)
    assert again.node_id == first.node_id
    assert first.node_id == NodeId.from_public_key(first.public_bytes)
    assert len(first.public_bytes) == 32


def test_transport_from_data_dir_keeps_its_node_id(tmp_path: Path) -> None:
    first = TcpTransport.create(tmp_path, TOKEN)
    again = TcpTransport.create(tmp_path, TOKEN)
    assert first.local.node_id == again.local.node_id == NodeIdentity.load_or_create(
        tmp_path).node_id
    assert first.credentials.keys.cluster_id == ClusterKeys(TOKEN).cluster_id


def test_key_readable_by_others_is_made_private(tmp_path: Path,
                                                caplog: pytest.LogCaptureFixture) -> None:
    first = NodeIdentity.load_or_create(tmp_path)
    (tmp_path / KEY_FILE).chmod(0o644)
    assert NodeIdentity.load_or_create(tmp_path).node_id == first.node_id
    assert stat.S_IMODE((tmp_path / KEY_FILE).stat().st_mode) == 0o600
    assert "was readable by others (mode 644); set to 0600" in caplog.text


@pytest.mark.parametrize("content", [b"", b"-----BEGIN PRIVATE KEY-----\ntrunc", b"\x00" * 64])
def test_a_broken_key_file_says_what_to_do(tmp_path: Path, content: bytes) -> None:
    (tmp_path / KEY_FILE).write_bytes(content)
    (tmp_path / KEY_FILE).chmod(0o600)
    with pytest.raises(LocalUsageError, match=re.escape(
            f"{tmp_path / KEY_FILE} is not a valid node key; move it away")):
        NodeIdentity.load_or_create(tmp_path)


def test_a_key_of_another_type_says_what_to_do(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption())
    (tmp_path / KEY_FILE).write_bytes(pem)
    (tmp_path / KEY_FILE).chmod(0o600)
    with pytest.raises(LocalUsageError, match="does not hold an Ed25519 key; move it away"):
        NodeIdentity.load_or_create(tmp_path)


def test_nodes_starting_at_once_on_one_data_dir_share_one_complete_key(tmp_path: Path) -> None:
    """The key appears under its name only once written and synced (link of a temporary
    file): a second starter never reads a half-written key, and the first writer wins."""
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(lambda _: NodeIdentity.load_or_create(tmp_path).node_id, range(32)))
    assert set(ids) == {NodeIdentity.load_or_create(tmp_path).node_id}
    assert os.listdir(tmp_path) == [KEY_FILE]  # no temporary file left behind
    assert stat.S_IMODE((tmp_path / KEY_FILE).stat().st_mode) == 0o600


def test_tokens_are_random_url_safe_and_long() -> None:
    tokens = {new_token() for _ in range(50)}
    assert len(tokens) == 50
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{43}", t) for t in tokens)


def test_token_comes_from_flag_then_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("P2PEXEC_TOKEN", "from-env")
    assert resolve_token("from-flag") == "from-flag"
    assert resolve_token(None) == "from-env"
    monkeypatch.delenv("P2PEXEC_TOKEN")
    assert resolve_token(None) is None


def test_cluster_id_is_stable_distinct_and_does_not_reveal_the_token() -> None:
    a, b = ClusterKeys(TOKEN), ClusterKeys(TOKEN + "x")
    assert a.cluster_id == ClusterKeys(TOKEN).cluster_id
    assert a.cluster_id != b.cluster_id
    assert re.fullmatch(r"[0-9a-f]{20}", a.cluster_id)
    assert TOKEN not in repr(a) and a.cluster_id in repr(a)
    assert len({a.cluster_id, a.proof_key.hex(), a.datagram_key.hex()}) == 3


def test_short_token_is_refused() -> None:
    with pytest.raises(LocalUsageError,
                       match=r"too short \(5 characters, need 16\); make one with `p2pexec tok"):
        ClusterKeys("short")


def test_sealed_datagram_round_trip_and_tampering() -> None:
    me = NodeIdentity.generate().node_id
    sender, receiver = DatagramSealer(ClusterKeys(TOKEN), me), DatagramSealer(
        ClusterKeys(TOKEN), NodeIdentity.generate().node_id)
    sealed = [sender.seal(b"hello %d" % i) for i in range(3)]
    assert [receiver.open(d) for d in sealed] == [(me, b"hello %d" % i) for i in range(3)]
    assert len(sealed[0]) == len(b"hello 0") + DatagramSealer.OVERHEAD
    twice = [sender.seal(b"same payload") for _ in range(2)]
    assert twice[0] != twice[1]  # same plaintext, fresh nonce: different ciphertexts
    counters = [DatagramSealer.HEADER.unpack_from(d)[3] for d in sealed + twice]
    assert counters == [0, 1, 2, 3, 4]  # the nonce counter never repeats under one key
    assert [receiver.open(d) for d in twice] == [(me, b"same payload")] * 2
    for i in (0, 5, 40, 60, len(sealed[0]) - 1):
        bad = bytearray(sealed[0])
        bad[i] ^= 1
        with pytest.raises(AuthenticationError):
            receiver.open(bytes(bad))
    with pytest.raises(AuthenticationError, match="wrong token"):
        DatagramSealer(ClusterKeys(TOKEN + "x"), me).open(sealed[0])
    with pytest.raises(AuthenticationError, match="too short"):
        receiver.open(b"tiny")


async def test_datagrams_from_another_cluster_are_dropped_and_logged(
        make_transport: Callable[..., TcpTransport], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "p2pexec.net")
    a, b = make_transport(), make_transport()
    outsider = make_transport(token=TOKEN + "-other")
    for t in (a, b, outsider):
        await t.bind()
    try:
        raw = trio.socket.socket(type=trio.socket.SOCK_DGRAM)
        await raw.bind(("127.0.0.1", 0))
        await raw.sendto(b"\x07" + os.urandom(199), b.local.address)
        await outsider.send_datagram(b.local.address, b"intruder")
        await a.send_datagram(b.local.address, b"member")
        with trio.fail_after(5):
            assert await b.receive_datagram() == (a.local.address, b"member")
        raw_port = raw.getsockname()[1]
        raw.close()
        assert [r.getMessage() for r in caplog.records] == [
            f"dropped datagram from 127.0.0.1:{raw_port}: datagram version 7 is not 1",
            f"dropped datagram from 127.0.0.1:{outsider.local.address[1]}: datagram failed "
            f"authentication (wrong token?)"]
        with pytest.raises(LocalProtocolError, match="over the 1327-byte limit"):
            await a.send_datagram(b.local.address, b"x" * 1328)
    finally:
        for t in (a, b, outsider):
            await t.aclose()


@pytest.mark.parametrize("changes", [
    {"connect_timeout": 0.0},
    {"handshake_timeout": -1.0},
    {"frame_timeout": 0.0},
    {"write_timeout": float("nan")},
    {"rpc_timeout": 0.0},
    {"log_interval": 0.0},
    {"max_handshakes": 0},
    {"send_buffer_bytes": 0},
    {"max_datagram_size": 100},       # no room left after the 73-byte seal
    {"max_datagram_size": 65_508},    # over the largest UDP payload
])
def test_nonsense_net_settings_are_refused_with_a_clear_error(changes: dict) -> None:
    with pytest.raises(LocalUsageError, match=f"NetConfig.{next(iter(changes))}"):
        dataclasses.replace(NetConfig.local(), **changes)


@pytest.mark.parametrize("changes", [{"max_frame_size": 0}, {"max_depth": 0},
                                     {"max_collection_len": -1}, {"max_str_len": 0},
                                     {"max_bin_len": 0}])
def test_nonsense_codec_limits_are_refused(changes: dict) -> None:
    with pytest.raises(LocalUsageError, match=f"CodecLimits.{next(iter(changes))}"):
        CodecLimits(**changes)

