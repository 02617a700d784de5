"""A task's or actor's runtime environment as it travels in its `TaskSpec`, and how a
worker process takes it on.

The driver resolves the user's `runtime_env` option (`p2pexec.runtime_env`): environment
variables stay as they are, and each directory (`working_dir`, every entry of
`py_modules`) becomes the SHA-256 of its package, a zip the driver's node stores and
unpacks once (`exec.packages`). So a `RuntimeEnv` is small, immutable and hashable: it
names what a worker needs and tags the workers that have it (a worker runs the work of
one environment for its life, as Ray's do).

No zipfile, no trio: worker processes import this module.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass

from p2pexec.net.codec import message

PACKAGE_HASH_SIZE = 32
"""A package is named by the SHA-256 of its zip."""
MAX_ENV_VARS = 1024
"""Environment variables one runtime_env may set (a peer's spec is refused beyond)."""
MAX_PY_MODULES = 64
"""Entries one runtime_env's py_modules may have (a peer's spec is refused beyond)."""


@message(189)
@dataclass(frozen=True, slots=True)
class RuntimeEnv:
    """Where and with what a task or actor runs: `env_vars` as (name, value) pairs sorted
    by name, and the packages (SHA-256 hashes) of its working dir and py_modules. Frozen
    and hashable: the node tags each worker with the one it was started for."""

    env_vars: tuple[tuple[str, str], ...] = ()
    working_dir: bytes | None = None
    py_modules: tuple[bytes, ...] = ()

    def __post_init__(self) -> None:
        """What a peer sends is checked here (the codec turns a ValueError into a protocol
        error): sizes, hash lengths, names the environment can hold."""
        if len(self.env_vars) > MAX_ENV_VARS or len(self.py_modules) > MAX_PY_MODULES:
            raise ValueError(f"a runtime_env has at most {MAX_ENV_VARS} env_vars and "
                             f"{MAX_PY_MODULES} py_modules")
        for name, value in self.env_vars:
            if not name or "=" in name or "\0" in name or "\0" in value:
                raise ValueError(f"environment variable {name!r} cannot be set")
        for package in self.packages():
            if len(package) != PACKAGE_HASH_SIZE:
                raise ValueError("a runtime_env package must be named by its SHA-256")

    def packages(self) -> tuple[bytes, ...]:
        """Every package it needs on the node that runs it: working dir first."""
        if self.working_dir is None:
            return self.py_modules
        return (self.working_dir, *self.py_modules)


def package_path(package_dir: str, package: bytes) -> str:
    """Where a node unpacks a package: one directory per content hash."""
    return os.path.join(package_dir, package.hex())


_REFERENCE = re.compile(r"\$\{([^}]*)\}")


def enter(env: RuntimeEnv, package_dir: str) -> None:
    """Make this worker process run `env`'s work, for good (Ray's semantics): its
    variables set (`${NAME}` in a value is NAME's value in the node's environment, ""
    when unset), its working dir the current directory and first on sys.path, each
    py_modules package (a directory holding the module) next, so the modules import by
    their names (in subprocesses too: PYTHONPATH). The node unpacked every package
    before it sent the first task."""
    for name, value in env.env_vars:
        os.environ[name] = _REFERENCE.sub(lambda m: os.environ.get(m.group(1), ""), value)
    paths = [package_path(package_dir, package) for package in env.packages()]
    sys.path[0:0] = [path for path in paths if path not in sys.path]
    if paths:  # for the Python subprocesses the work starts, as Ray's PYTHONPATH
        os.environ["PYTHONPATH"] = os.pathsep.join(
            [*paths, *filter(None, [os.environ.get("PYTHONPATH")])])
    if env.working_dir is not None:
        os.chdir(paths[0])
