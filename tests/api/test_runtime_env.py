"""runtime_env through the public API (Ray's names and meanings): a project's files reach
the tasks that need them and no one else, env_vars stay with the work that asked for
them, and bad directories fail clearly while the node keeps serving."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

import p2pexec as px
from p2pexec.exec import context, packages

pytestmark = pytest.mark.usefixtures("cluster")


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))


@pytest.fixture
def project(tmp_path):
    """A multi-file project: a module, a package it imports, a data file."""
    root = tmp_path / "project"
    write(root / "geometry.py", """
        from shapes import square

        def area(side):
            return square.area(side)
        """)
    write(root / "shapes" / "__init__.py", "")
    write(root / "shapes" / "square.py", "def area(side):\n    return side * side\n")
    write(root / "notes.txt", "read from the working dir\n")
    return root


JOB = """
    import json, os, sys
    import p2pexec as px

    project = sys.argv[1]
    px.init(num_cpus=2, runtime_env={"working_dir": project, "env_vars": {"STAGE": "job"}})
    try:
        import geometry
        sys.exit("the driver itself imported the project")
    except ModuleNotFoundError:
        pass  # only its tasks run in the working dir (Ray's rule for px.init)

    @px.remote
    def area(side):
        import geometry
        return (geometry.area(side), open("notes.txt").read().strip(), os.environ["STAGE"],
                os.path.dirname(geometry.__file__) == os.getcwd())

    @px.remote(runtime_env={"env_vars": {"STAGE": "task", "EXTRA": "1"}})
    def stage():
        return os.environ["STAGE"], os.environ.get("EXTRA"), os.path.exists("notes.txt")

    @px.remote
    def parent():
        return px.get(area.remote(3))  # a child inherits the job's environment

    @px.remote
    class Surveyor:
        def measure(self, side):
            import geometry
            return geometry.area(side)

    surveyor = Surveyor.remote()
    print(json.dumps({"area": px.get(area.remote(4), timeout=60),
                      "stage": px.get(stage.remote(), timeout=60),
                      "nested": px.get(parent.remote(), timeout=60),
                      "actor": px.get(surveyor.measure.remote(5), timeout=60),
                      "cwd": os.getcwd()}))
"""


def test_a_job_runs_a_project_the_driver_cannot_import_from_another_directory(
        project, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(JOB), str(project)],
                          cwd=elsewhere, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert answer == {
        "area": [16, "read from the working dir", "job", True],
        # env_vars merge over the job's; the working dir is still the job's
        "stage": ["task", "1", True],
        "nested": [9, "read from the working dir", "job", True],
        "actor": 25,
        "cwd": str(elsewhere)}


@px.remote
def variable(name):
    return os.environ.get(name), os.getpid()


def test_env_vars_are_seen_by_their_task_and_never_by_the_next_one():
    name = "P2PEXEC_TEST_RUNTIME_ENV"
    with_it = variable.options(runtime_env={"env_vars": {name: "set"}})
    value, pid = px.get(with_it.remote(name))
    assert value == "set"
    after = px.get([variable.remote(name) for _ in range(20)])
    assert [value for value, _ in after] == [None] * 20
    assert pid not in {pid for _, pid in after}  # its worker runs its environment only
    assert px.get(with_it.remote(name))[0] == "set"


@px.remote
class Holder:
    def look(self, name):
        return os.environ.get(name), open("notes.txt").read().strip()


def test_an_actor_keeps_its_runtime_env_for_its_life(project):
    name = "P2PEXEC_TEST_ACTOR_ENV"
    holder = Holder.options(runtime_env={"env_vars": {name: "kept"},
                                         "working_dir": str(project)}).remote()
    looks = px.get([holder.look.remote(name) for _ in range(3)])
    assert looks == [("kept", "read from the working dir")] * 3
    assert px.get(variable.remote(name))[0] is None


@px.remote
def import_value(module):
    import importlib

    return importlib.import_module(module).VALUE


def test_py_modules_are_importable_by_their_names(tmp_path, monkeypatch):
    write(tmp_path / "libs" / "fancylib" / "__init__.py", "from .core import VALUE\n")
    write(tmp_path / "libs" / "fancylib" / "core.py", "VALUE = 'fancy'\n")
    write(tmp_path / "other" / "plainlib" / "__init__.py", "VALUE = 'plain'\n")
    by_path = import_value.options(
        runtime_env={"py_modules": [str(tmp_path / "libs" / "fancylib")]})
    assert px.get(by_path.remote("fancylib")) == "fancy"
    monkeypatch.syspath_prepend(str(tmp_path / "other"))
    import plainlib  # an imported package works too (Ray's form)

    by_module = import_value.options(runtime_env={"py_modules": [plainlib]})
    assert px.get(by_module.remote("plainlib")) == "plain"
    with pytest.raises(ModuleNotFoundError):  # not for work without them
        px.get(import_value.remote("fancylib"))


@px.remote
def read_notes():
    return open("notes.txt").read().strip()


def test_a_directory_is_zipped_again_only_when_its_files_change(project, monkeypatch):
    packed = []
    pack = packages.pack
    monkeypatch.setattr(packages, "pack", lambda *a, **k: packed.append(1) or pack(*a, **k))
    env = {"working_dir": str(project)}
    assert px.get(read_notes.options(runtime_env=env).remote()) == "read from the working dir"
    assert px.get(read_notes.options(runtime_env=env).remote()) == "read from the working dir"
    assert len(packed) == 1
    (project / "notes.txt").write_text("changed\n")
    assert px.get(read_notes.options(runtime_env=env).remote()) == "changed"
    assert len(packed) == 2


@px.remote
def plain(x):
    return x + 1


def test_bad_runtime_envs_fail_clearly_and_the_node_keeps_serving(tmp_path, monkeypatch):
    missing = str(tmp_path / "missing")
    with pytest.raises(px.LocalUsageError, match=r"working_dir '.*missing' does not exist"):
        plain.options(runtime_env={"working_dir": missing})
    (tmp_path / "file.py").write_text("")
    with pytest.raises(px.LocalUsageError, match=r"py_modules entry '.*file.py' is not a "
                                                 r"directory"):
        plain.options(runtime_env={"py_modules": [str(tmp_path / "file.py")]})
    with pytest.raises(px.LocalUsageError, match=r"\['conda', 'pip'\] are not supported; "
                                                 r"the supported keys are \['env_vars', "
                                                 r"'py_modules', 'working_dir'\]"):
        plain.options(runtime_env={"pip": ["requests"], "conda": "env"})
    with pytest.raises(px.LocalUsageError, match="env_vars must be a dict of str to str"):
        plain.options(runtime_env={"env_vars": {"N": 1}})
    big = tmp_path / "big"
    big.mkdir()
    (big / "data.bin").write_bytes(b"x" * 5000)
    monkeypatch.setattr(packages, "MAX_PACKAGE_BYTES", 4096)
    with pytest.raises(px.LocalUsageError) as caught:
        px.get(plain.options(runtime_env={"working_dir": str(big)}).remote(1))
    assert "is 5000 bytes" in str(caught.value)
    assert "over the limit of 4096 bytes" in str(caught.value)
    # a package the node cannot check is refused there, with the reason
    with pytest.raises(px.RuntimeEnvSetupError, match="do not hash to its name"):
        context.runtime.call("store_package", [bytes(32), b"not the zip of that hash"])
    assert px.get([plain.remote(i) for i in range(4)]) == [1, 2, 3, 4]
