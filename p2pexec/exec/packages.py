"""Packages: the directories of a `runtime_env` (`working_dir`, `py_modules`), zipped by
the driver and unpacked once by each node that runs work needing them.

- The driver scans a directory (sorted, `__pycache__` and `.git` left out, at most
  `MAX_PACKAGE_BYTES`) and zips it deterministically (fixed timestamps and modes), so
  the SHA-256 of the zip is a hash of the content: the same files make the same package
  on every run, and a package's name proves its bytes.
- A node stores a package under that hash (`PackageStore`): it checks the hash and the
  limits, unpacks into a directory of its own with every entry checked (no absolute
  path, no `..`, no link: a zip cannot write outside it), and keeps the zip to serve
  peers. Peers fetch it in `PackageChunk`s (`PackageRequest`, over the mesh's RPC).
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import stat
import tempfile
import zipfile
from dataclasses import dataclass

from p2pexec.errors import LocalUsageError, RuntimeEnvSetupError
from p2pexec.exec.runtime_env import package_path
from p2pexec.net.codec import message

MiB = 1024 * 1024

MAX_PACKAGE_BYTES = 100 * MiB
"""Largest package: the files of one directory, and the zip of them (Ray's limit for a
working_dir or py_modules entry). A driver checks it before zipping; a node refuses
anything larger from a client or a peer. Data belongs in objects (`px.put`)."""
MAX_PACKAGE_FILES = 100_000
"""Most entries one package may hold (a zip of millions of empty files is refused)."""
SKIPPED = frozenset({"__pycache__", ".git"})
"""Directories never packed: caches and history the workers do not need."""
CHUNK_BYTES = 4 * MiB
"""Bytes a peer sends per `PackageChunk` (a frame holds 16 MiB): a 100 MiB package is
25 round trips, once per node."""
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)
"""Every entry's timestamp: the zip's bytes depend on the content only."""


@dataclass(frozen=True, slots=True)
class Scan:
    """What a directory holds, as it will be packed: entries (name in the zip, path on
    disk, size, mtime in ns, mode; directories end in "/") in sorted order. `entries` is
    also the fingerprint that tells an unchanged directory from a changed one."""

    root: str
    entries: tuple[tuple[str, str, int, int, int], ...]
    size: int


def directory(path: str | os.PathLike[str], what: str) -> str:
    """The absolute path of an existing directory (relative to the current one);
    `LocalUsageError` naming `what` ("working_dir 'x'") when it is missing or a file."""
    root = os.path.abspath(path)
    if not os.path.exists(root):
        raise LocalUsageError(f"runtime_env {what} does not exist")
    if not os.path.isdir(root):
        raise LocalUsageError(f"runtime_env {what} is not a directory")
    return root


def scan(path: str, what: str, prefix: str = "", limit: int | None = None) -> Scan:
    """The entries of directory `path` (`what` names it in errors: "working_dir 'x'"),
    each name starting with `prefix` (a py_module's own name, so it imports by it).
    Symbolic links to files are followed, links to directories and special files left
    out. `LocalUsageError` when it is missing, not a directory, or over `limit` bytes
    (default `MAX_PACKAGE_BYTES`) or `MAX_PACKAGE_FILES` entries."""
    limit = MAX_PACKAGE_BYTES if limit is None else limit
    root = directory(path, what)
    entries: list[tuple[str, str, int, int, int]] = []
    size = 0
    walk = os.walk(root)
    for folder, subdirs, files in walk:
        subdirs[:] = sorted(d for d in subdirs if d not in SKIPPED
                            and not os.path.islink(os.path.join(folder, d)))
        relative = os.path.relpath(folder, root)
        base = prefix if relative == "." else f"{prefix}{relative.replace(os.sep, '/')}/"
        if base:
            entries.append((base, folder, 0, 0, stat.S_IFDIR | 0o755))
        for name in sorted(files):
            full = os.path.join(folder, name)
            try:
                info = os.stat(full)
            except OSError:  # a dangling link, or removed while we looked
                continue
            if stat.S_ISREG(info.st_mode):
                entries.append((base + name, full, info.st_size, info.st_mtime_ns,
                                info.st_mode))
                size += info.st_size
        if size > 10 * limit or len(entries) > 10 * MAX_PACKAGE_FILES:
            break  # far over: say so without walking the rest (a home directory...)
    if size > limit or len(entries) > MAX_PACKAGE_FILES:
        whole = next(walk, None) is None
        raise LocalUsageError(
            f"runtime_env {what} is {'' if whole else 'more than '}{_mib(size)} in "
            f"{len(entries)} files and directories, over the limit of {_mib(limit)} and "
            f"{MAX_PACKAGE_FILES} entries on a runtime_env directory; point it at the "
            f"code only, and pass data as objects (px.put)")
    return Scan(root, tuple(entries), size)


def pack(found: Scan, what: str, limit: int | None = None) -> bytes:
    """The zip of a scanned directory: entries in order, fixed timestamps, modes 0o644
    or 0o755, so equal content gives equal bytes. `LocalUsageError` when the zip
    itself is over `limit` (incompressible files near the limit)."""
    limit = MAX_PACKAGE_BYTES if limit is None else limit
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=6) as archive:
        for name, full, _size, _mtime, mode in found.entries:
            info = zipfile.ZipInfo(name, _ZIP_TIME)
            info.create_system = 3  # unix: the mode below is read back
            if name.endswith("/"):
                info.external_attr = (stat.S_IFDIR | 0o755) << 16 | 0x10
                archive.writestr(info, b"")
                continue
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = (stat.S_IFREG | (0o755 if mode & 0o111 else 0o644)) << 16
            try:
                with open(full, "rb") as file:
                    archive.writestr(info, file.read())
            except OSError as exc:
                raise LocalUsageError(f"runtime_env {what}: cannot read {full}: {exc}") from None
    data = buffer.getvalue()
    if len(data) > limit:
        raise LocalUsageError(f"runtime_env {what} zips to {_mib(len(data))}, over the "
                              f"{_mib(limit)} limit on a runtime_env directory")
    return data


def package_hash(data: bytes) -> bytes:
    """A package's name: the SHA-256 of its zip."""
    return hashlib.sha256(data).digest()


def _mib(size: int) -> str:
    """A size as people read it (bytes below a MiB, so small test limits read right)."""
    return f"{size / MiB:.1f} MiB" if size >= MiB else f"{size} bytes"


# ---- a node's store ----
class PackageStore:
    """A node's packages under one directory: `<hash>.zip` as received (what peers are
    served) and `<hash>/` unpacked (what workers use). Blocking file work: the node
    calls it from a thread. Only packages whose hash checked and that unpacked whole
    get their final names, so a name in this directory is a package to trust."""

    def __init__(self, directory: str | None) -> None:
        """`directory` None: a private temporary one, made by `open`."""
        self.directory = directory or ""
        self._private = directory is None

    def open(self) -> None:
        """Start empty: leftovers belong to an earlier life of the node, whose scheduler
        does not know it holds them."""
        if self._private:
            self.directory = tempfile.mkdtemp(prefix="p2pexec-packages-")
            return
        shutil.rmtree(self.directory, ignore_errors=True)
        os.makedirs(self.directory, mode=0o700, exist_ok=True)

    def close(self) -> None:
        """Remove every package: a node that comes back fetches them again."""
        if self.directory:
            shutil.rmtree(self.directory, ignore_errors=True)

    def zip_path(self, package: bytes) -> str:
        return package_path(self.directory, package) + ".zip"

    def part_path(self, package: bytes) -> str:
        """A fresh file name for bytes still to be checked."""
        return f"{package_path(self.directory, package)}.part-{os.urandom(8).hex()}"

    def add(self, package: bytes, data: bytes, limit: int | None = None) -> None:
        """Store a package a local client sent (its bytes, checked as a peer's)."""
        part = self.part_path(package)
        with open(part, "wb") as file:
            file.write(data)
        self.install(package, part, limit)

    def install(self, package: bytes, part: str, limit: int | None = None) -> None:
        """Check the bytes in file `part` against the package's hash and the limits,
        unpack them (every entry checked), and keep them as the package. The part file
        is gone afterwards either way. `RuntimeEnvSetupError` says what was wrong."""
        limit = MAX_PACKAGE_BYTES if limit is None else limit
        target = package_path(self.directory, package)
        unpacking = f"{target}.unpacking-{os.urandom(8).hex()}"
        try:
            size = os.path.getsize(part)
            if size > limit:
                raise RuntimeEnvSetupError(f"package {package.hex()} is {_mib(size)}, over "
                                           f"the {_mib(limit)} limit")
            digest = hashlib.sha256()
            with open(part, "rb") as file:
                for block in iter(lambda: file.read(MiB), b""):
                    digest.update(block)
            if digest.digest() != package:
                raise RuntimeEnvSetupError(f"the bytes of package {package.hex()} do not "
                                           f"hash to its name; refused")
            if not os.path.isdir(target):
                unpack(part, unpacking, limit)
                try:
                    os.rename(unpacking, target)
                except OSError:  # another thread unpacked the same package first
                    if not os.path.isdir(target):
                        raise
            os.replace(part, self.zip_path(package))
        except OSError as exc:
            raise RuntimeEnvSetupError(f"package {package.hex()} could not be stored: "
                                       f"{exc}") from None
        finally:
            if os.path.exists(part):
                os.unlink(part)
            shutil.rmtree(unpacking, ignore_errors=True)

    def size(self, package: bytes) -> int:
        return os.path.getsize(self.zip_path(package))

    def read(self, package: bytes, offset: int, count: int) -> bytes:
        """Up to `count` bytes of a stored package's zip from `offset` (what a peer asks)."""
        with open(self.zip_path(package), "rb") as file:
            return os.pread(file.fileno(), count, offset)


def unpack(zip_path: str, target: str, limit: int | None = None) -> None:
    """Unpack a zip into the new directory `target`, refusing (`RuntimeEnvSetupError`)
    an archive over `limit` bytes unpacked or `MAX_PACKAGE_FILES` entries, and any entry
    that would land outside `target` (absolute, `..` or a NUL in its name), is
    a link or repeats a name. Files get mode 0o644 or 0o755, nothing else."""
    limit = MAX_PACKAGE_BYTES if limit is None else limit
    root = os.path.abspath(target)
    try:
        os.makedirs(root, mode=0o700)
        with zipfile.ZipFile(zip_path) as archive:
            infos = archive.infolist()
            if len(infos) > MAX_PACKAGE_FILES:
                raise RuntimeEnvSetupError(f"a package holds {len(infos)} entries, over "
                                           f"the limit of {MAX_PACKAGE_FILES}")
            unpacked = sum(info.file_size for info in infos)
            if unpacked > limit:
                raise RuntimeEnvSetupError(f"a package unpacks to {_mib(unpacked)}, over "
                                           f"the {_mib(limit)} limit")
            for info in infos:
                destination = _inside(root, info.filename)
                mode = info.external_attr >> 16
                if stat.S_ISLNK(mode):
                    raise RuntimeEnvSetupError(f"package entry {info.filename!r} is a "
                                               f"link; refused")
                if info.is_dir():
                    os.makedirs(destination, exist_ok=True)
                    continue
                os.makedirs(os.path.dirname(destination), exist_ok=True)
                with archive.open(info) as source, open(destination, "xb") as out:
                    shutil.copyfileobj(source, out, MiB)
                os.chmod(destination, 0o755 if mode & 0o111 else 0o644)
    except RuntimeEnvSetupError:
        raise
    except (OSError, ValueError, EOFError, RuntimeError, NotImplementedError,
            zipfile.BadZipFile) as exc:  # RuntimeError: encrypted; NotImplemented: codec
        raise RuntimeEnvSetupError(f"a package could not be unpacked: "
                                   f"{exc or type(exc).__name__}") from None


def _inside(root: str, name: str) -> str:
    """Where entry `name` goes under `root`; `RuntimeEnvSetupError` if anywhere else
    (zip-slip)."""
    parts = name.replace("\\", "/").split("/")
    if not name or "\0" in name or name.startswith(("/", "\\")) or ".." in parts:
        raise RuntimeEnvSetupError(f"package entry {name!r} points outside its directory; "
                                   f"refused")
    destination = os.path.normpath(os.path.join(root, *parts))
    if os.path.commonpath([root, destination]) != root:
        raise RuntimeEnvSetupError(f"package entry {name!r} points outside its directory; "
                                   f"refused")
    return destination


# ---- between nodes ----
@message(190)
@dataclass(frozen=True, slots=True)
class PackageRequest:
    """A node given work whose package it lacks asks the node that gave it for the zip,
    from byte `offset` on."""

    package: bytes
    offset: int


@message(191)
@dataclass(frozen=True, slots=True)
class PackageChunk:
    """Up to `CHUNK_BYTES` of the zip from the asked offset, and its whole size; `size`
    None when the node does not hold the package."""

    size: int | None
    data: bytes
