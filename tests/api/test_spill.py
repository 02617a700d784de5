"""Objects over the node's memory cap spill to disk, least recently used first, and are
read back from there by drivers, tasks and actors, then deleted when freed."""

import json

from fresh_interpreter import run_python

SPILL = """
    import json, os, time
    import numpy as np
    import p2pexec as px
    from p2pexec.exec import context

    MIB = 2**20
    px.init(num_cpus=1, object_store_memory=10 * MIB)
    service = context.runtime.service
    spill_dir = service.spill_dir

    @px.remote
    def total(array):
        return int(array.sum())

    @px.remote
    class Keeper:
        def __init__(self, array):
            self.array = array
        def total(self):
            return int(self.array.sum())

    refs = [px.put(np.full(MIB, i, dtype=np.int32)) for i in range(6)]  # 4 MiB each
    deadline = time.monotonic() + 20
    while service.core.objects.memory_bytes > 10 * MIB and time.monotonic() < deadline:
        time.sleep(0.05)
    out = {"in_memory": service.core.objects.memory_bytes,
           "spilled": len(os.listdir(spill_dir)),
           "oldest_spilled": os.path.exists(os.path.join(
               spill_dir, service.core.objects.payload(refs[0].id)[1]))}
    out["driver"] = [int(px.get(ref).sum()) for ref in refs]
    out["tasks"] = px.get([total.remote(ref) for ref in refs])
    keeper = Keeper.remote(refs[1])
    out["actor"] = px.get(keeper.total.remote())
    del refs, keeper
    deadline = time.monotonic() + 20
    while os.listdir(spill_dir) and time.monotonic() < deadline:
        time.sleep(0.05)
    out["left_after_free"] = len(os.listdir(spill_dir))
    px.shutdown()
    out["dir_removed"] = not os.path.exists(spill_dir)
    print(json.dumps(out))
"""


def test_objects_over_the_cap_spill_to_disk_and_are_read_back():
    out = json.loads(run_python(SPILL, timeout=120).strip().splitlines()[-1])
    mib = 2**20
    assert out["in_memory"] <= 10 * mib
    assert out["spilled"] >= 4  # 24 MiB of objects under a 10 MiB cap
    assert out["oldest_spilled"]  # least recently used first
    assert out["driver"] == [i * mib for i in range(6)]
    assert out["tasks"] == [i * mib for i in range(6)]
    assert out["actor"] == mib
    assert out["left_after_free"] == 0
    assert out["dir_removed"]
