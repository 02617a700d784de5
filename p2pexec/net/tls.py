"""The secure channel: TLS 1.3, then hello (versions, claimed id) and the token proof.

Order on each side, all under the caller's handshake timeout:

1. TLS 1.3 with both certificates required to chain to the token CA (`security`): a peer
   without the token, or with another token, fails here and no frame is ever read.
2. Each side sends `Hello` and reads the peer's (frames of at most `HANDSHAKE_FRAME` bytes):
   magic, protocol versions (the newest both speak is chosen, else refused), and the claimed
   node id, which must equal SHA-256 of the key in the peer's certificate and, when the
   caller pinned one, the expected id.
3. Each side sends `TokenProof`, an HMAC under the token over both certificates, both hello
   nonces and the TLS channel binding, and checks the peer's with `hmac.compare_digest`.

Only then does the connection carry application messages.
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass

import trio
from cryptography.hazmat.primitives.serialization import Encoding

from p2pexec.errors import AuthenticationError, RemoteProtocolError
from p2pexec.ids import NodeId
from p2pexec.net.codec import PROTOCOL_MAX, PROTOCOL_MIN, Codec, FrameDecoder, negotiate
from p2pexec.net.messages import MAGIC, Hello, TokenProof
from p2pexec.net.security import (
    ClusterKeys,
    NodeIdentity,
    check_token_proof,
    node_certificate,
    peer_node_id,
    ssl_context,
    token_proof,
)

HANDSHAKE_FRAME = 4096
"""Largest hello or proof accepted (a hello is ~100 bytes)."""

_TLS_REASONS = {
    "PEER_DID_NOT_RETURN_A_CERTIFICATE":
        "presented no certificate (not a p2pexec node, or started without the token)",
    "CERTIFICATE_VERIFY_FAILED":
        "has a certificate not signed by this cluster's token (different --token?)",
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": "refused us: it requires a certificate",
    "TLSV1_ALERT_UNKNOWN_CA": "refused our certificate (different --token?)",
    "SSLV3_ALERT_BAD_CERTIFICATE": "refused our certificate (different --token?)",
    "TLSV1_ALERT_DECRYPT_ERROR": "refused our certificate (different --token?)",
    "WRONG_VERSION_NUMBER": "does not speak TLS (sent plain bytes)",
    "PACKET_LENGTH_TOO_LONG": "does not speak TLS (sent plain bytes)",
    "HTTP_REQUEST": "does not speak TLS (sent an HTTP request)",
    "UNEXPECTED_MESSAGE": "broke the TLS handshake (unexpected message)",
    "UNSUPPORTED_PROTOCOL": "offered no TLS 1.3",
    "TLSV1_ALERT_PROTOCOL_VERSION": "offered no TLS 1.3",
    "NO_SHARED_CIPHER": "shares no TLS 1.3 cipher with us",
    "UNEXPECTED_EOF_WHILE_READING":
        "hung up during the TLS handshake (it did not trust our certificate: different "
        "--token?)",
}


def describe_tls_failure(exc: BaseException) -> str:
    """A short human reason for a failed TLS handshake, from the ssl error underneath."""
    cause: BaseException | None = exc
    while cause is not None and not isinstance(cause, ssl.SSLError):
        cause = cause.__cause__ or cause.__context__
    if cause is None:
        return "closed the connection during the TLS handshake"
    reason = getattr(cause, "reason", None) or ""
    if reason in _TLS_REASONS:
        return _TLS_REASONS[reason]
    return f"failed the TLS handshake ({reason or cause})"


@dataclass(frozen=True)
class Credentials:
    """This node's key, the token-derived keys and the two TLS contexts built from them."""

    identity: NodeIdentity
    keys: ClusterKeys
    cert_der: bytes
    server_context: ssl.SSLContext
    client_context: ssl.SSLContext

    @classmethod
    def create(cls, identity: NodeIdentity, keys: ClusterKeys) -> Credentials:
        """Build the certificate and both TLS contexts (once per node start)."""
        cert = node_certificate(identity, keys)
        return cls(identity, keys, cert.public_bytes(Encoding.DER),
                   ssl_context(identity, keys, cert, server=True),
                   ssl_context(identity, keys, cert, server=False))

    @property
    def node_id(self) -> NodeId:
        return self.identity.node_id


@dataclass
class SecureChannel:
    """A stream that passed every check: who is at the other end, which protocol version,
    the frame decoder and the frames that arrived right behind the peer's token proof."""

    stream: trio.SSLStream[trio.abc.Stream]
    peer: NodeId
    version: int
    decoder: FrameDecoder
    early: list[bytes]


async def _read_message(stream: trio.SSLStream[trio.abc.Stream], decoder: FrameDecoder,
                        codec: Codec, expect: type) -> object:
    """The next handshake message. The decoder is held to HANDSHAKE_FRAME and parses one
    frame at a time, so an oversized hello is refused from its header and what follows the
    proof is left for the connection's own limit."""
    decoder.max_frame_size = HANDSHAKE_FRAME
    frames = decoder.feed(b"", max_frames=1)
    while not frames:
        try:
            data = await stream.receive_some(65536)
        except trio.BrokenResourceError as exc:
            raise AuthenticationError(f"peer {describe_tls_failure(exc)}") from None
        if not data:
            raise AuthenticationError("peer closed the connection during the handshake "
                                      "(it may have refused our token proof or node id)")
        frames = decoder.feed(data, max_frames=1)
    msg = codec.decode(frames[0])
    if type(msg) is not expect:
        raise RemoteProtocolError(f"expected {expect.__name__} in the handshake, "
                                  f"got {type(msg).__name__}")
    return msg


async def secure(stream: trio.abc.Stream, creds: Credentials, codec: Codec, *, server: bool,
                 expected: NodeId | None = None) -> SecureChannel:
    """Run the whole handshake on a fresh byte stream (see the module docstring).

    Raises `AuthenticationError` or `RemoteProtocolError` naming the reason; the caller
    applies the timeout and closes the stream on failure."""
    ctx = creds.server_context if server else creds.client_context
    tls = trio.SSLStream(stream, ctx, server_side=server, server_hostname=None)
    try:
        await tls.do_handshake()
    except trio.BrokenResourceError as exc:
        raise AuthenticationError(f"peer {describe_tls_failure(exc)}") from None
    peer_cert = tls.getpeercert(binary_form=True)
    peer = peer_node_id(peer_cert)
    assert peer_cert is not None  # peer_node_id refused a missing certificate
    nonce = os.urandom(32)
    decoder = FrameDecoder(HANDSHAKE_FRAME)
    hello = Hello(MAGIC, PROTOCOL_MIN, PROTOCOL_MAX, creds.node_id, nonce)
    try:
        await tls.send_all(codec.frame(hello))
    except trio.BrokenResourceError as exc:
        raise AuthenticationError(f"peer {describe_tls_failure(exc)}") from None
    theirs = await _read_message(tls, decoder, codec, Hello)
    assert isinstance(theirs, Hello)
    if theirs.magic != MAGIC:
        raise RemoteProtocolError(f"peer is not speaking p2pexec (magic {theirs.magic!r})")
    version = negotiate(PROTOCOL_MIN, PROTOCOL_MAX, theirs.min_version, theirs.max_version)
    if theirs.node_id != peer:
        raise AuthenticationError(f"peer claims node id {theirs.node_id.short} but its key "
                                  f"is node {peer.short}")
    if expected is not None and peer != expected:
        raise AuthenticationError(f"peer is node {peer.short}, expected {expected.short}")
    binding = tls.get_channel_binding("tls-unique") or b""
    role, their_role = (b"server", b"client") if server else (b"client", b"server")
    mine = token_proof(creds.keys, role=role, own_cert=creds.cert_der, peer_cert=peer_cert,
                       own_nonce=nonce, peer_nonce=theirs.nonce, binding=binding)
    try:
        await tls.send_all(codec.frame(TokenProof(mine)))
    except trio.BrokenResourceError as exc:
        raise AuthenticationError(f"peer {describe_tls_failure(exc)}") from None
    proof = await _read_message(tls, decoder, codec, TokenProof)
    assert isinstance(proof, TokenProof)
    check_token_proof(token_proof(creds.keys, role=their_role, own_cert=peer_cert,
                                  peer_cert=creds.cert_der, own_nonce=theirs.nonce,
                                  peer_nonce=nonce, binding=binding), proof.mac)
    decoder.max_frame_size = codec.limits.max_frame_size  # application frames from here
    return SecureChannel(tls, peer, version, decoder, decoder.feed(b""))

