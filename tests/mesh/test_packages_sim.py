"""runtime_env packages between whole nodes on SimNetwork: thieves fetch a package from
the node that gave them its work once each, and bytes that do not hash to the package's
name fail the work that needed them, clearly, while the rest runs."""

from __future__ import annotations

import trio
from test_mesh_sim import three_nodes, triple

from p2pexec.errors import RuntimeEnvSetupError
from p2pexec.exec import packages
from p2pexec.exec.runtime_env import RuntimeEnv


def package_of(directory) -> tuple[bytes, bytes]:
    data = packages.pack(packages.scan(str(directory), "working_dir"), "working_dir")
    return packages.package_hash(data), data


async def test_thieves_fetch_a_package_once_and_refuse_bytes_of_another_hash(
        autojump_clock, tmp_path):
    (tmp_path / "project").mkdir()
    (tmp_path / "project" / "model.py").write_text("WEIGHTS = [1, 2, 3]\n")
    package, data = package_of(tmp_path / "project")
    async with trio.open_nursery() as nursery:
        cluster = await three_nodes(nursery, seed=4, duration=0.1)
        owner = cluster.nodes[0]
        await owner.call("store_package", [package, data])
        ids = [owner.submit(triple, i, runtime_env=RuntimeEnv((), package))
               for i in range(60)]
        assert [await owner.result(oid) for oid in ids] == [3 * i for i in range(60)]
        stolen = [sim.node.exec.core.counts["stolen_in"] for sim in cluster.nodes]
        fetched = [sim.node.exec.mesh.packages_fetched for sim in cluster.nodes]
        assert stolen[1] and stolen[2], stolen
        assert fetched == [0, 1, 1]
        # an owner whose store now hands out other bytes than the package's
        (tmp_path / "project" / "model.py").write_text("WEIGHTS = [4, 5, 6]\n")
        changed, data = package_of(tmp_path / "project")
        await owner.call("store_package", [changed, data])
        owner.node.exec.packages.read = lambda _package, offset, count: bytes(
            min(count, len(data) - offset))
        ids = [owner.submit(triple, i, runtime_env=RuntimeEnv((), changed))
               for i in range(60)]
        failed = []
        for i, oid in enumerate(ids):
            try:
                assert await owner.result(oid) == 3 * i
            except RuntimeEnvSetupError as exc:
                failed.append(str(exc))
        assert failed, "no thief took any of them"
        assert all("do not hash to its name" in text for text in failed), failed
        assert [sim.node.exec.mesh.packages_fetched for sim in cluster.nodes] == [0, 1, 1]
        assert all(changed not in sim.node.exec.core.packages for sim in cluster.nodes[1:])
        nursery.cancel_scope.cancel()

