"""The `runtime_env` option, Ray's names and meanings: checked where it is given
(`px.init(runtime_env=...)` for every task and actor of the driver, `@px.remote(...)`
or `.options(...)` for one function or class), merged over the environment the work is
submitted from, and turned into the `RuntimeEnv` its `TaskSpec` carries.

Supported keys: `env_vars` (a dict of str to str), `working_dir` (a directory: the
work runs with it as its current directory and first on sys.path) and `py_modules` (a
list of package directories, or imported packages, importable by their names). pip,
conda and the rest of Ray's keys install software; here every node must have it.

Merging (Ray's inheritance): env_vars are merged key by key over the parent's (the
job's, or those of the task that submits); working_dir and py_modules, when given,
replace the parent's. Each directory is zipped into a package once per content
(`exec.packages`) and stored with the caller's node, which unpacks it once.
"""

from __future__ import annotations

import os
import types
import weakref
from collections.abc import Mapping
from typing import Any

from p2pexec.errors import LocalUsageError
from p2pexec.exec.runtime_env import MAX_PY_MODULES, RuntimeEnv

SUPPORTED = ("env_vars", "py_modules", "working_dir")

_packed: dict[tuple[str, str], tuple[tuple, bytes]] = {}
"""Per (directory, name prefix): the fingerprint of what it held when last packed, and
the package it made. A directory is zipped again only when a file changed."""
_stored: weakref.WeakKeyDictionary[Any, set[bytes]] = weakref.WeakKeyDictionary()
"""Per runtime (a connection to a node): the packages that node has been given."""


class RuntimeEnvOption:
    """A `runtime_env` as the caller gave it, checked: unknown keys, wrong types and
    missing directories are `LocalUsageError`s at once. `resolve` packs its directories
    (when first needed) and merges it over the submitting environment."""

    __slots__ = ("_memo", "env_vars", "py_modules", "working_dir")

    def __init__(self, env_vars: dict[str, str] | None, working_dir: str | None,
                 py_modules: tuple[str, ...] | None) -> None:
        self.env_vars = env_vars
        self.working_dir = working_dir
        """Absolute path, or None: the parent's."""
        self.py_modules = py_modules
        """Absolute paths, or None: the parent's."""
        self._memo: tuple[weakref.ref, RuntimeEnv | None, RuntimeEnv | None] | None = None
        """(runtime, parent environment, answer) of the last `resolve`: the runtime held
        weakly, so a function kept after px.shutdown does not keep the old node alive."""

    @classmethod
    def parse(cls, value: Any) -> RuntimeEnvOption | None:
        """The option for `value` (a dict, or None for none)."""
        if value is None:
            return None
        if not isinstance(value, Mapping):
            raise LocalUsageError(f"runtime_env must be a dict, got {type(value).__name__}")
        unknown = sorted(set(value) - set(SUPPORTED))
        if unknown:
            raise LocalUsageError(
                f"runtime_env key(s) {unknown} are not supported; the supported keys are "
                f"{list(SUPPORTED)} (pip, conda and other installers are not: install "
                f"packages on every node)")
        env_vars = value.get("env_vars")
        if env_vars is not None:
            env_vars = _env_vars(env_vars)
        working_dir = value.get("working_dir")
        if working_dir is not None:
            working_dir = _directory(working_dir, "working_dir")
        py_modules = value.get("py_modules")
        if py_modules is not None:
            if isinstance(py_modules, (str, bytes)) or not isinstance(py_modules,
                                                                       (list, tuple)):
                raise LocalUsageError("runtime_env py_modules must be a list of package "
                                      "directories or imported packages")
            if len(py_modules) > MAX_PY_MODULES:
                raise LocalUsageError(f"runtime_env py_modules has {len(py_modules)} "
                                      f"entries, over the limit of {MAX_PY_MODULES}")
            py_modules = tuple(_directory(_module_path(entry), "py_modules entry")
                               for entry in py_modules)
        return cls(env_vars, working_dir, py_modules)

    def resolve(self, runtime: Any) -> RuntimeEnv | None:
        """This option over `runtime.runtime_env` (the job's, or the running task's):
        env_vars merged, directories replaced, each packed and stored with `runtime`'s
        node the first time. The same answer while neither changes."""
        parent = runtime.runtime_env
        memo = self._memo
        if memo is not None and memo[0]() is runtime and memo[1] is parent:
            return memo[2]
        env_vars = dict(parent.env_vars) if parent is not None else {}
        env_vars.update(self.env_vars or {})
        working_dir = (parent.working_dir if parent is not None else None) \
            if self.working_dir is None else _package(runtime, self.working_dir, "")
        py_modules = (parent.py_modules if parent is not None else ()) \
            if self.py_modules is None else tuple(
                _package(runtime, path, os.path.basename(path) + "/")
                for path in self.py_modules)
        env = None
        if env_vars or working_dir is not None or py_modules:
            env = RuntimeEnv(tuple(sorted(env_vars.items())), working_dir, py_modules)
        self._memo = (weakref.ref(runtime), parent, env)
        return env


def effective(option: RuntimeEnvOption | None, runtime: Any) -> RuntimeEnv | None:
    """The environment work submitted through `runtime` with `option` runs in."""
    return runtime.runtime_env if option is None else option.resolve(runtime)


def _env_vars(value: Any) -> dict[str, str]:
    if not isinstance(value, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise LocalUsageError("runtime_env env_vars must be a dict of str to str, got "
                              f"{value!r}")
    try:
        RuntimeEnv(tuple(value.items()))
    except ValueError as exc:
        raise LocalUsageError(f"runtime_env env_vars: {exc}") from None
    return dict(value)


def _module_path(entry: Any) -> Any:
    """A py_modules entry's directory: a path as given, or an imported package's."""
    if isinstance(entry, types.ModuleType):
        paths = list(getattr(entry, "__path__", []))
        if len(paths) != 1:
            raise LocalUsageError(f"py_modules takes packages (a directory each); module "
                                  f"{entry.__name__} is not one")
        return paths[0]
    return entry


def _directory(path: Any, what: str) -> str:
    """An existing directory's absolute path (relative ones are from the current
    directory, now)."""
    from p2pexec.exec import packages  # here: worker processes import this module, and
    # never pack (zipfile, the store)

    if not isinstance(path, (str, os.PathLike)):
        raise LocalUsageError(f"runtime_env {what} must be a path, got {path!r}")
    return packages.directory(path, f"{what} {os.fspath(path)!r}")


def _package(runtime: Any, path: str, prefix: str) -> bytes:
    """The package of directory `path` (entries under `prefix`), stored with
    `runtime`'s node: zipped again only when its files changed, sent to a node once."""
    from p2pexec.exec import packages

    what = f"{'py_modules entry' if prefix else 'working_dir'} {path!r}"
    found = packages.scan(path, what, prefix)
    stored = _stored.setdefault(runtime, set())
    known = _packed.get((path, prefix))
    if known is not None and known[0] == found.entries and known[1] in stored:
        return known[1]
    data = packages.pack(found, what)
    package = packages.package_hash(data)
    if package not in stored:
        runtime.call("store_package", [package, data])
        stored.add(package)
    _packed[(path, prefix)] = (found.entries, package)
    return package
