"""Packages of a runtime_env: deterministic zips named by their content, size limits with
clear errors, a store that checks what it is given and never writes outside its
directory, and the environment a worker takes on."""

import io
import os
import stat
import sys
import zipfile

import pytest

from p2pexec.errors import LocalUsageError, RemoteProtocolError, RuntimeEnvSetupError
from p2pexec.exec.packages import PackageStore, pack, package_hash, scan
from p2pexec.exec.runtime_env import RuntimeEnv, enter, package_path
from p2pexec.exec.task import TASK, TaskSpec
from p2pexec.net.codec import Codec


def make_project(root):
    (root / "pkg").mkdir(parents=True)
    (root / "main.py").write_text("VALUE = 1\n")
    (root / "pkg" / "__init__.py").write_text("")
    (root / "pkg" / "tool.sh").write_text("#!/bin/sh\n")
    (root / "pkg" / "tool.sh").chmod(0o755)
    (root / "__pycache__").mkdir()
    (root / "__pycache__" / "main.cpython-311.pyc").write_bytes(b"cache")
    (root / ".git").mkdir()
    (root / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    return root


def zip_of(tmp_path, prefix=""):
    return pack(scan(str(tmp_path / "project"), "working_dir 'project'", prefix), "it")


def test_the_zip_depends_on_the_content_only(tmp_path):
    project = make_project(tmp_path / "project")
    first = zip_of(tmp_path)
    os.utime(project / "main.py", (1, 1))  # another mtime: same package
    assert zip_of(tmp_path) == first
    (project / "main.py").write_text("VALUE = 2\n")  # other content: another package
    changed = zip_of(tmp_path)
    assert package_hash(changed) != package_hash(first)
    names = zipfile.ZipFile(io.BytesIO(changed)).namelist()
    assert names == ["main.py", "pkg/", "pkg/__init__.py", "pkg/tool.sh"]  # sorted, no caches


def test_a_py_module_is_packed_under_its_own_name(tmp_path):
    make_project(tmp_path / "project")
    names = zipfile.ZipFile(io.BytesIO(zip_of(tmp_path, "project/"))).namelist()
    assert names == ["project/", "project/main.py", "project/pkg/", "project/pkg/__init__.py",
                     "project/pkg/tool.sh"]


def test_a_missing_path_or_a_file_is_refused_by_name(tmp_path):
    with pytest.raises(LocalUsageError, match=r"working_dir 'nowhere' does not exist"):
        scan(str(tmp_path / "nowhere"), "working_dir 'nowhere'")
    (tmp_path / "file.py").write_text("")
    with pytest.raises(LocalUsageError, match=r"'file.py' is not a directory"):
        scan(str(tmp_path / "file.py"), "working_dir 'file.py'")


def test_a_directory_over_the_limit_is_refused_naming_its_size_and_the_limit(tmp_path):
    (tmp_path / "big").mkdir()
    (tmp_path / "big" / "data.bin").write_bytes(b"x" * 3000)
    with pytest.raises(LocalUsageError) as caught:
        scan(str(tmp_path / "big"), "working_dir 'big'", limit=1024)
    assert ("working_dir 'big' is 3000 bytes in 1 files and directories, over the limit "
            "of 1024 bytes") in str(caught.value)
    (tmp_path / "big" / "more.bin").write_bytes(b"x" * 20_000)  # far over: not all walked
    with pytest.raises(LocalUsageError, match=r"is (more than )?\d+ bytes"):
        scan(str(tmp_path / "big"), "working_dir 'big'", limit=1024)


def test_the_store_unpacks_a_package_once_with_its_modes(tmp_path):
    make_project(tmp_path / "project")
    data = zip_of(tmp_path)
    package = package_hash(data)
    store = PackageStore(str(tmp_path / "store"))
    store.open()
    store.add(package, data)
    store.add(package, data)  # again: nothing changes
    unpacked = tmp_path / "store" / package.hex()
    assert (unpacked / "main.py").read_text() == "VALUE = 1\n"
    assert stat.S_IMODE((unpacked / "pkg" / "tool.sh").stat().st_mode) == 0o755
    assert stat.S_IMODE((unpacked / "main.py").stat().st_mode) == 0o644
    assert store.size(package) == len(data)
    assert store.read(package, 10, 5) == data[10:15]
    assert sorted(os.listdir(tmp_path / "store")) == [package.hex(), package.hex() + ".zip"]


def test_bytes_that_do_not_hash_to_the_name_are_refused_and_leave_nothing(tmp_path):
    make_project(tmp_path / "project")
    data = zip_of(tmp_path)
    store = PackageStore(str(tmp_path / "store"))
    store.open()
    with pytest.raises(RuntimeEnvSetupError, match="do not hash to its name"):
        store.add(bytes(32), data)
    with pytest.raises(RuntimeEnvSetupError, match="over the 100 bytes limit"):
        store.add(package_hash(data), data, limit=100)
    assert os.listdir(tmp_path / "store") == []


def crafted(entries):
    """A zip whose entries a hostile peer chose: (name, data or None for a link)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries:
            info = zipfile.ZipInfo(name)
            info.compress_type = zipfile.ZIP_DEFLATED
            if data is None:
                info.external_attr = (stat.S_IFLNK | 0o777) << 16
                data = b"/etc/passwd"
            archive.writestr(info, data)
    return buffer.getvalue()


@pytest.mark.filterwarnings("ignore:Duplicate name")
@pytest.mark.parametrize("entries, reason", [
    ([("../evil.py", b"x")], "points outside"),
    ([("ok/../../evil.py", b"x")], "points outside"),
    ([("/tmp/evil.py", b"x")], "points outside"),
    ([("link", None)], "is a link"),
    ([("same.py", b"a"), ("same.py", b"b")], "could not be unpacked"),
])
def test_a_hostile_zip_is_refused_and_writes_nothing_outside(tmp_path, entries, reason):
    data = crafted(entries)
    store = PackageStore(str(tmp_path / "store"))
    store.open()
    with pytest.raises(RuntimeEnvSetupError, match=reason):
        store.add(package_hash(data), data)
    assert os.listdir(tmp_path / "store") == []
    assert sorted(os.listdir(tmp_path)) == ["store"]


def test_a_zip_that_unpacks_over_the_limit_is_refused(tmp_path):
    data = crafted([("zeros.bin", bytes(4096))])  # a small zip of a large file
    assert len(data) < 1024
    store = PackageStore(str(tmp_path / "store"))
    store.open()
    with pytest.raises(RuntimeEnvSetupError, match="unpacks to 4096 bytes, over the 1024"):
        store.add(package_hash(data), data, limit=1024)
    assert os.listdir(tmp_path / "store") == []


def test_a_runtime_env_travels_in_a_task_spec_and_a_bad_one_is_refused():
    codec = Codec()
    env = RuntimeEnv((("A", "1"),), bytes(32), (b"\1" * 32,))
    spec = TaskSpec(b"t" * 16, TASK, b"c" * 16, None, [0, b"", []], (), (), (b"r" * 20,),
                    "f", runtime_env=env)
    decoded = codec.decode(codec.encode(spec))
    assert decoded.runtime_env == env and env.packages() == (bytes(32), b"\1" * 32)
    short = codec.encode(spec).replace(b"\xc4\x20" + b"\1" * 32, b"\xc4\x1f" + b"\1" * 31)
    with pytest.raises(RemoteProtocolError, match="SHA-256"):
        codec.decode(short)
    with pytest.raises(ValueError, match="cannot be set"):
        RuntimeEnv((("A=B", "1"),))


def test_a_worker_takes_on_its_environment(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setenv("BASE", "/opt")
    monkeypatch.delenv("ADDED", raising=False)
    monkeypatch.setenv("PYTHONPATH", "/already")
    monkeypatch.chdir(tmp_path)
    work, module = bytes(32), b"\1" * 32
    for package in (work, module):
        os.makedirs(package_path(str(tmp_path), package))
    enter(RuntimeEnv((("ADDED", "${BASE}/lib:${UNSET}"),), work, (module,)), str(tmp_path))
    assert os.environ["ADDED"] == "/opt/lib:"
    assert os.getcwd() == package_path(str(tmp_path), work)
    paths = [package_path(str(tmp_path), work), package_path(str(tmp_path), module)]
    assert sys.path[:2] == paths
    assert os.environ["PYTHONPATH"] == os.pathsep.join([*paths, "/already"])
