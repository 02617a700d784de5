"""A Python program's embedded node joins a cluster: px.init(cluster=...) and px.nodes()."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from join_helpers import Launcher, states, wait_for

from p2pexec.net.security import new_token

DRIVER = textwrap.dedent("""
    import json, sys, time
    import p2pexec as px

    token, peer_port, data_dir = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    px.init(num_cpus=1, cluster=px.ClusterConfig.preset(
        "local", token, host="127.0.0.1", port=0, data_dir=data_dir, mdns=False,
        peers=(("127.0.0.1", peer_port),)))
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        nodes = px.nodes()
        if len([n for n in nodes if n["state"] == "alive"]) >= 2 and nodes[0]["workers"]:
            break
        time.sleep(0.1)

    @px.remote
    def double(x):
        return 2 * x

    print(json.dumps({"nodes": nodes, "task": px.get(double.remote(21))}), flush=True)
    px.shutdown()
""")


def test_embedded_driver_joins_and_lists_members(launcher: Launcher, tmp_path: Path):
    token = new_token()
    seed = launcher.start("seed", token, ["--host", "127.0.0.1", "--port", "0",
                                          "--gossip", "local", "--no-mdns"]).wait_started()
    port = int(seed.address.rsplit(":", 1)[1])
    done = subprocess.run([sys.executable, "-c", DRIVER, token, str(port),
                           str(tmp_path / "driver")],
                          capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    nodes = report["nodes"]
    assert report["task"] == 42
    assert nodes[0]["workers"] == 1 and nodes[0]["state"] == "alive"  # this node first
    assert {n["name"]: n["state"] for n in nodes[1:]} == {"seed": "alive"}
    assert nodes[1]["address"] == seed.address
    # the seed saw the driver's node come and then leave gracefully (not fail)
    assert wait_for(lambda: "left" in states(seed.status()).values(), 15)
