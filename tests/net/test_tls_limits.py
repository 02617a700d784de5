"""The handshake's own limits and where the node key goes when TLS loads it (code review
findings): a hello frame is refused from its header, the private key never lands on disk
in plaintext outside the data dir."""

from __future__ import annotations

import os
import ssl
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from p2pexec.errors import RemoteProtocolError
from p2pexec.net.codec import HEADER, Codec, FrameDecoder
from p2pexec.net.messages import MAGIC, Hello, TokenProof
from p2pexec.net.security import KEY_FILE, ClusterKeys, NodeIdentity, token_proof
from p2pexec.net.tls import HANDSHAKE_FRAME, Credentials, secure

KEYS = ClusterKeys("tls-limits-token-0123456789")


async def test_an_oversized_hello_is_refused_from_its_header(
        make_credentials: Callable[..., Credentials]) -> None:
    """Before, the handshake buffered up to max_frame_size (16 MiB) of a hello before
    checking the handshake limit; now the header alone ends it."""
    server_end, client_end = trio.testing.memory_stream_pair()
    client = trio.SSLStream(client_end, make_credentials().client_context,
                            server_hostname=None)
    caught: list[BaseException] = []

    async def serve() -> None:
        try:
            await secure(server_end, make_credentials(), Codec(), server=True)
        except RemoteProtocolError as exc:
            caught.append(exc)

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve)
            await client.do_handshake()
            await client.send_all(HEADER.pack(1 << 20) + b"x" * 1000)  # claims 1 MiB
    assert [str(e) for e in caught] == [
        f"frame of {1 << 20} bytes announced, over the {HANDSHAKE_FRAME}-byte limit"]


async def test_application_frames_right_behind_the_proof_may_be_large(
        make_credentials: Callable[..., Credentials]) -> None:
    """Only the hello and the proof are held to HANDSHAKE_FRAME: a big first message sent
    in the same write as the proof is an ordinary frame."""
    a, b = make_credentials(), make_credentials()
    server_end, client_end = trio.testing.memory_stream_pair()
    codec = Codec()
    big = Hello(MAGIC, 1, 1, a.node_id, b"n" * 100_000)
    got: list[Any] = []

    async def serve() -> None:
        channel = await secure(server_end, a, codec, server=True)
        data = list(channel.early)
        while not data:
            data = channel.decoder.feed(await channel.stream.receive_some(1 << 20))
        got.append(codec.decode(data[0]))

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve)
            client = trio.SSLStream(client_end, b.client_context, server_hostname=None)
            await client.do_handshake()
            nonce = os.urandom(32)
            await client.send_all(codec.frame(Hello(MAGIC, 1, 1, b.node_id, nonce)))
            decoder = FrameDecoder(HANDSHAKE_FRAME)
            frames: list[bytes] = []
            while not frames:
                frames = decoder.feed(await client.receive_some(65536))
            theirs = codec.decode(frames[0])
            peer_cert = client.getpeercert(binary_form=True)
            assert peer_cert is not None
            mac = token_proof(b.keys, role=b"client", own_cert=b.cert_der,
                              peer_cert=peer_cert, own_nonce=nonce, peer_nonce=theirs.nonce,
                              binding=client.get_channel_binding("tls-unique") or b"")
            await client.send_all(codec.frame(TokenProof(mac)) + codec.frame(big))
    assert got == [big]


def capture_key_loads(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Record, at the moment TLS loads it, where the key file is and what it holds."""
    loads: list[dict[str, Any]] = []
    real = ssl.SSLContext.load_cert_chain

    def spy(self: ssl.SSLContext, certfile: str, keyfile: str | None = None,
            password: Any = None) -> None:
        assert keyfile is not None
        loads.append({"keyfile": Path(keyfile), "pem": Path(keyfile).read_bytes(),
                      "mode": stat.S_IMODE(os.stat(keyfile).st_mode),
                      "dir_mode": stat.S_IMODE(os.stat(Path(keyfile).parent).st_mode)})
        real(self, certfile, keyfile, password)

    monkeypatch.setattr(ssl.SSLContext, "load_cert_chain", spy)
    return loads


def test_a_key_from_the_data_dir_is_loaded_from_there(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    identity = NodeIdentity.load_or_create(tmp_path)
    loads = capture_key_loads(monkeypatch)
    Credentials.create(identity, KEYS)
    assert [load["keyfile"] for load in loads] == [tmp_path / KEY_FILE] * 2


def test_an_in_memory_key_is_never_written_in_plaintext(
        monkeypatch: pytest.MonkeyPatch) -> None:
    loads = capture_key_loads(monkeypatch)
    Credentials.create(NodeIdentity.generate(), KEYS)
    assert [(load["pem"].split(b"\n")[0], load["mode"], load["dir_mode"],
             load["keyfile"].exists()) for load in loads] == [
        (b"-----BEGIN ENCRYPTED PRIVATE KEY-----", 0o600, 0o700, False)] * 2
