"""Shared-memory segments for large objects, read by same-machine processes without copies.

A segment is a file in /dev/shm (a tmpfs) mapped with mmap. Readers keep the mapping
alive through the memoryviews they hand to pickle, so numpy arrays built from it stay
valid after the owner unlinks the name; the kernel frees the pages with the last mapping.
Names carry the creating node's pid so segments orphaned by a killed process can be
swept at the next start (`sweep_orphans`).
"""

from __future__ import annotations

import mmap
import os
import re
import tempfile

from p2pexec.processes import pid_alive

PREFIX = "p2px"
_NAME = re.compile(rf"^{PREFIX}_(\d+)_[0-9a-f]+$")


def segment_dir() -> str:
    """Where segments live: /dev/shm when it exists (tmpfs), else the temp dir."""
    return "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()


def segment_name(owner_pid: int, object_id: bytes) -> str:
    return f"{PREFIX}_{owner_pid}_{object_id.hex()}"


def create(name: str, size: int) -> memoryview:
    """A new writable segment of `size` bytes (at least 1), mapped into this process."""
    path = os.path.join(segment_dir(), name)
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    try:
        os.ftruncate(fd, max(size, 1))
        mapping = mmap.mmap(fd, max(size, 1))
    finally:
        os.close(fd)
    return memoryview(mapping)


def attach(name: str) -> memoryview:
    """Map an existing segment read-only; raises FileNotFoundError once it is gone."""
    path = os.path.join(segment_dir(), name)
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        mapping = mmap.mmap(fd, size, prot=mmap.PROT_READ)
    finally:
        os.close(fd)
    return memoryview(mapping)


def unlink(name: str) -> None:
    """Remove a segment's name; processes that mapped it keep their view."""
    try:
        os.unlink(os.path.join(segment_dir(), name))
    except FileNotFoundError:
        pass


def sweep_orphans() -> int:
    """Unlink segments whose creating process no longer exists. Returns how many."""
    removed = 0
    directory = segment_dir()
    for entry in os.listdir(directory):
        match = _NAME.match(entry)
        if match is None:
            continue
        pid = int(match.group(1))
        if pid == os.getpid() or pid_alive(pid):
            continue
        unlink(entry)
        removed += 1
    return removed
