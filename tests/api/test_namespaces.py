"""Named actors live in namespaces (Ray's `namespace=`): a driver's, set by px.init, is
the one its tasks and actors use too; "" is the shared default."""

import json

import pytest
from fresh_interpreter import run_python

import p2pexec as px

pytestmark = pytest.mark.usefixtures("cluster")


@px.remote
class Box:
    def __init__(self, value):
        self.value = value

    def get(self):
        return self.value


@px.remote
def look_up(name):
    return px.get(px.get_actor(name).get.remote()), px.get_runtime_context().namespace


def test_the_same_name_lives_once_per_namespace():
    default = Box.options(name="box").remote("default")
    other = Box.options(name="box", namespace="other").remote("other")
    assert px.get(px.get_actor("box").get.remote(), timeout=30) == "default"
    assert px.get(px.get_actor("box", namespace="other").get.remote(), timeout=30) == "other"
    with pytest.raises(px.P2PExecError):
        px.get_actor("box", namespace="elsewhere")
    assert px.get(look_up.remote("box"), timeout=30) == ("default", "")
    assert px.get_runtime_context().namespace == ""
    px.kill(default)
    px.kill(other)


def test_a_drivers_namespace_is_where_its_tasks_look_names_up():
    out = run_python("""
        import json
        import p2pexec as px

        px.init(address="local", num_cpus=1, namespace="team")

        @px.remote
        class Box:
            def get(self):
                return "team box"

        @px.remote
        def look_up(name):
            return (px.get(px.get_actor(name).get.remote()),
                    px.get_runtime_context().get_namespace())

        box = Box.options(name="box").remote()
        visible = px.get(look_up.remote("box"), timeout=30)
        try:
            px.get_actor("box", namespace="")
            default = "found"
        except px.P2PExecError:
            default = "absent"
        print(json.dumps([visible, default, px.get_runtime_context().namespace]))
        px.shutdown()
    """)
    assert json.loads(out.strip().splitlines()[-1]) == [["team box", "team"], "absent",
                                                        "team"]


def test_bad_namespaces_and_names_are_refused():
    with pytest.raises(px.LocalUsageError, match="namespace"):
        Box.options(name="x", namespace="a:b").remote(1)
    with pytest.raises(px.LocalUsageError, match="name"):
        px.get_actor("")
