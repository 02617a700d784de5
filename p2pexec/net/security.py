"""Keys, the cluster token and everything derived from them. No home-made cryptography:
Ed25519 keys and X.509 from `cryptography`, TLS 1.3 from stdlib `ssl`, HKDF-SHA256, HMAC-SHA256
and AES-256-GCM from `cryptography`.

What comes from what:

* node key: Ed25519, created on first start, kept as PKCS#8 PEM (mode 0600) in the data dir.
  node id = SHA-256 of the 32-byte raw Ed25519 public key (RFC 8032 encoding).
* token: random URL-safe text, the one secret a user handles. From it, with HKDF-SHA256 and a
  distinct `info` per use: the cluster id (safe to advertise, one-way), the key of the cluster
  certificate authority (CA), the HMAC key of the token proof and the datagram key.
* certificate: each node's public key in an X.509 certificate signed by the token CA, made
  fresh in memory at start. Both TLS sides require a certificate chaining to the token CA,
  so a peer without the token fails in the TLS handshake itself; then each side checks
  the peer certificate's key against the node id it claims (pinning), and both exchange an
  HMAC proof of the token bound to both certificates and this TLS session (`token_proof`).
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import logging
import os
import secrets
import ssl
import stat
import struct
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidTag, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.x509.oid import NameOID

from p2pexec.errors import AuthenticationError, LocalUsageError
from p2pexec.ids import NodeId

log = logging.getLogger("p2pexec.net")

KEY_FILE = "node_key.pem"
TOKEN_ENV = "P2PEXEC_TOKEN"
MIN_TOKEN_CHARS = 16
"""A shorter token is refused: 16 URL-safe characters carry 96 bits, the least we accept."""

_EPOCH = datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc)
_NEVER = datetime.datetime(9999, 12, 31, 23, 59, 59, tzinfo=datetime.timezone.utc)


def _hkdf(secret: bytes, info: bytes, length: int = 32, salt: bytes | None = None) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(secret)


# ---- node identity -----------------------------------------------------------------------

@dataclass(frozen=True)
class NodeIdentity:
    """A node's long-lived key pair and the id bound to it."""

    private_key: ed25519.Ed25519PrivateKey = field(repr=False)
    key_path: Path | None = field(default=None, compare=False)
    """The PEM file the key was loaded from (None: in memory only). TLS loads it from
    there, so the key is never copied."""

    @property
    def public_bytes(self) -> bytes:
        """The 32-byte raw public key (RFC 8032): what the node id hashes."""
        return self.private_key.public_key().public_bytes(serialization.Encoding.Raw,
                                                          serialization.PublicFormat.Raw)

    @property
    def node_id(self) -> NodeId:
        return NodeId.from_public_key(self.public_bytes)

    @classmethod
    def generate(cls) -> NodeIdentity:
        """A fresh in-memory identity (tests, throwaway nodes)."""
        return cls(ed25519.Ed25519PrivateKey.generate())

    @classmethod
    def load_or_create(cls, data_dir: Path) -> NodeIdentity:
        """The node key in `data_dir`, created (0600, directory 0700) on first start.

        A new key is written to a temporary file, synced, then linked to its name: the key
        file is always whole, and when several nodes start at once the first link wins
        and the others load its key."""
        data_dir = Path(data_dir)
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = data_dir / KEY_FILE
        if path.exists():
            return cls._load(path)
        identity = cls.generate()
        pem = identity.private_key.private_bytes(serialization.Encoding.PEM,
                                                 serialization.PrivateFormat.PKCS8,
                                                 serialization.NoEncryption())
        tmp = data_dir / f".{KEY_FILE}.{os.getpid()}.{secrets.token_hex(8)}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(pem)
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, path)
            except FileExistsError:  # another node on this data dir was first
                return cls._load(path)
        finally:
            tmp.unlink()
        _fsync_dir(data_dir)
        log.info("created node key %s, node id %s", path, identity.node_id.short)
        return cls(identity.private_key, path)

    @classmethod
    def _load(cls, path: Path) -> NodeIdentity:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            log.warning("node key %s was readable by others (mode %o); set to 0600", path, mode)
            path.chmod(0o600)
        what_to_do = "move it away and a new one is created (the node gets a new id)"
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            # TypeError: a key that wants a password
            raise LocalUsageError(f"{path} is not a valid node key; {what_to_do} "
                                  f"({exc})") from None
        if not isinstance(key, ed25519.Ed25519PrivateKey):
            raise LocalUsageError(f"{path} does not hold an Ed25519 key; {what_to_do}")
        return cls(key, path)


def _fsync_dir(directory: Path) -> None:
    """Make a new directory entry durable (the key's link) before the node id is used."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---- the cluster token -------------------------------------------------------------------

def new_token() -> str:
    """A fresh cluster token: 32 random bytes as URL-safe text (43 characters), never
    starting with "-" (one in 64 would, and `--token -abc` reads as a missing value)."""
    while True:
        token = secrets.token_urlsafe(32)
        if not token.startswith("-"):
            return token


def resolve_token(explicit: str | None) -> str | None:
    """The token from `--token`, else from `$P2PEXEC_TOKEN`, else None."""
    return explicit or os.environ.get(TOKEN_ENV) or None


@dataclass(frozen=True)
class ClusterKeys:
    """Everything derived from the token. Holding these is holding the token."""

    token: str = field(repr=False)
    cluster_id: str = field(init=False)
    proof_key: bytes = field(init=False, repr=False)
    datagram_key: bytes = field(init=False, repr=False)
    ca_key: ed25519.Ed25519PrivateKey = field(init=False, repr=False)
    ca_certificate: x509.Certificate = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if len(self.token) < MIN_TOKEN_CHARS:
            raise LocalUsageError(f"cluster token too short ({len(self.token)} characters, "
                                  f"need {MIN_TOKEN_CHARS}); make one with `p2pexec token new`")
        secret = self.token.encode("utf-8")
        put = object.__setattr__
        put(self, "cluster_id", _hkdf(secret, b"p2pexec cluster id v1", 10).hex())
        put(self, "proof_key", _hkdf(secret, b"p2pexec token proof v1"))
        put(self, "datagram_key", _hkdf(secret, b"p2pexec datagram v1"))
        ca_key = ed25519.Ed25519PrivateKey.from_private_bytes(_hkdf(secret, b"p2pexec ca v1"))
        put(self, "ca_key", ca_key)
        name = _name(f"p2pexec cluster {self.cluster_id}")
        ca = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
              .public_key(ca_key.public_key()).serial_number(1)
              .not_valid_before(_EPOCH).not_valid_after(_NEVER)
              .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
              .add_extension(x509.KeyUsage(
                  digital_signature=False, content_commitment=False, key_encipherment=False,
                  data_encipherment=False, key_agreement=False, key_cert_sign=True,
                  crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
              .sign(ca_key, None))
        put(self, "ca_certificate", ca)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


# ---- certificates and TLS contexts -------------------------------------------------------

def node_certificate(identity: NodeIdentity, keys: ClusterKeys) -> x509.Certificate:
    """The node's public key signed by the token CA (valid forever: trust is the token)."""
    return (x509.CertificateBuilder().subject_name(_name(f"p2pexec node {identity.node_id.short}"))
            .issuer_name(keys.ca_certificate.subject)
            .public_key(identity.private_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(_EPOCH).not_valid_after(_NEVER)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(keys.ca_key, None))


def ssl_context(identity: NodeIdentity, keys: ClusterKeys, cert: x509.Certificate, *,
                server: bool) -> ssl.SSLContext:
    """TLS 1.3 only; both sides present `cert` and require one from the token CA.

    Host names are not checked: a peer is who its key says (`peer_node_id`), not a name."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(
        cadata=keys.ca_certificate.public_bytes(serialization.Encoding.PEM).decode("ascii"))
    # ssl loads a certificate chain only from files. The key is loaded from the data dir
    # when it came from there; an in-memory key goes to a private temporary directory
    # (0700, file 0600, removed right after loading) encrypted under a one-time random
    # password, so it is never on disk in plaintext outside the data dir.
    with tempfile.TemporaryDirectory(prefix="p2pexec-tls-") as tmp:
        cert_path = os.path.join(tmp, "cert.pem")
        with open(cert_path, "wb") as f:
            f.write(cert.public_bytes(serialization.Encoding.PEM))
        if identity.key_path is not None:
            ctx.load_cert_chain(cert_path, identity.key_path)
            return ctx
        password = secrets.token_bytes(32)
        key_path = os.path.join(tmp, "key.pem")
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(identity.private_key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                serialization.BestAvailableEncryption(password)))
        try:
            ctx.load_cert_chain(cert_path, key_path, password=password)
        finally:
            os.unlink(key_path)
    return ctx


def peer_node_id(peer_cert_der: bytes | None) -> NodeId:
    """The node id proven by the peer's TLS certificate (its key signed the handshake)."""
    if not peer_cert_der:
        raise AuthenticationError("peer presented no certificate")
    try:
        key = x509.load_der_x509_certificate(peer_cert_der).public_key()
    except ValueError as exc:
        raise AuthenticationError(f"peer certificate cannot be read: {exc}") from None
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise AuthenticationError("peer certificate does not hold an Ed25519 key")
    return NodeId.from_public_key(key.public_bytes(serialization.Encoding.Raw,
                                                   serialization.PublicFormat.Raw))


def token_proof(keys: ClusterKeys, *, role: bytes, own_cert: bytes, peer_cert: bytes,
                own_nonce: bytes, peer_nonce: bytes, binding: bytes) -> bytes:
    """HMAC-SHA256 under the token's proof key over both certificates, both nonces and the
    TLS channel binding: valid only for this pair of keys on this TLS session."""
    parts = [role, hashlib.sha256(own_cert).digest(), hashlib.sha256(peer_cert).digest(),
             own_nonce, peer_nonce, binding]
    msg = b"".join(struct.pack(">H", len(p)) + p for p in parts)
    return hmac.new(keys.proof_key, msg, hashlib.sha256).digest()


def check_token_proof(expected: bytes, got: bytes) -> None:
    """Constant-time comparison; `AuthenticationError` if the peer lacks the token."""
    if not hmac.compare_digest(expected, got):
        raise AuthenticationError("peer did not prove the cluster token (check that both "
                                  "machines use the same --token)")


# ---- datagrams ---------------------------------------------------------------------------

class DatagramSealer:
    """AES-256-GCM sealing of UDP datagrams under a key derived from the token.

    Wire form: version (1) | sender node id (32) | session salt (16) | counter (8) |
    ciphertext + tag (16); the first 57 bytes are the associated data. Each sender derives
    its own key per session, HKDF(datagram key, salt, info=sender id), and counts nonces
    up from 0, so nonces never repeat under one key. A receiver caches keys only after a
    datagram under them authenticated, so forged salts cost one HKDF each and no memory.
    Datagrams may be replayed by someone on the path: the transport seam already promises
    only best-effort, possibly duplicated delivery, and gossip tolerates duplicates."""

    VERSION = 1
    HEADER = struct.Struct(">B32s16sQ")
    OVERHEAD = HEADER.size + 16
    CACHE = 4096

    def __init__(self, keys: ClusterKeys, node_id: NodeId) -> None:
        self._root = keys.datagram_key
        self._me = node_id
        self._salt = os.urandom(16)
        self._aead = AESGCM(self._derive(node_id.raw, self._salt))
        self._counter = 0
        self._peers: dict[tuple[bytes, bytes], AESGCM] = {}

    def _derive(self, sender: bytes, salt: bytes) -> bytes:
        return _hkdf(self._root, b"p2pexec datagram session v1" + sender, salt=salt)

    def seal(self, payload: bytes) -> bytes:
        header = self.HEADER.pack(self.VERSION, self._me.raw, self._salt, self._counter)
        nonce = b"\0\0\0\0" + header[-8:]
        self._counter += 1
        return header + self._aead.encrypt(nonce, payload, header)

    def open(self, datagram: bytes) -> tuple[NodeId, bytes]:
        """(sender, payload), or `AuthenticationError` if it was not sealed with the token."""
        if len(datagram) < self.OVERHEAD:
            raise AuthenticationError(f"datagram of {len(datagram)} bytes is too short")
        version, sender, salt, _counter = self.HEADER.unpack_from(datagram)
        if version != self.VERSION:
            raise AuthenticationError(f"datagram version {version} is not {self.VERSION}")
        header = datagram[:self.HEADER.size]
        aead = self._peers.get((sender, salt))
        cached = aead is not None
        if aead is None:
            aead = AESGCM(self._derive(sender, salt))
        try:
            payload = aead.decrypt(b"\0\0\0\0" + header[-8:], datagram[self.HEADER.size:], header)
        except InvalidTag:
            raise AuthenticationError("datagram failed authentication (wrong token?)") from None
        if not cached:
            if len(self._peers) >= self.CACHE:
                del self._peers[next(iter(self._peers))]
            self._peers[(sender, salt)] = aead
        return NodeId(sender), payload
