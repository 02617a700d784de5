"""A joblib backend: `register_p2pexec()`, then `joblib.parallel_backend("p2pexec")`, and
`joblib.Parallel` (scikit-learn's `n_jobs` among its users) runs on the mesh.

It is joblib's own multiprocessing backend with `p2pexec.util.multiprocessing.Pool` in
place of a local process pool: joblib batches the calls, each batch is a task, and
`n_jobs=-1` means every CPU of the cluster. Needs joblib (`pip install
'p2pexec[joblib]'`).
"""

from __future__ import annotations

from typing import Any

try:
    from joblib._parallel_backends import MultiprocessingBackend
    from joblib.parallel import register_parallel_backend
except ImportError as exc:  # pragma: no cover - depends on what is installed
    raise ImportError("p2pexec.util.joblib needs joblib: pip install 'p2pexec[joblib]'"
                      ) from exc

from p2pexec import api
from p2pexec.util.multiprocessing import Pool

BACKEND = "p2pexec"


class P2PExecBackend(MultiprocessingBackend):
    """joblib's pool backend over p2pexec tasks (see the module docstring)."""

    def effective_n_jobs(self, n_jobs: int | None) -> int:
        """`n_jobs` as joblib reads it, with the cluster's CPUs for the machine's:
        -1 is all of them, -2 all but one, None is 1."""
        if n_jobs == 0:
            raise ValueError("n_jobs == 0 in Parallel has no meaning")
        if n_jobs is None:
            return 1
        if n_jobs < 0:
            cpus = int(api.cluster_resources().get("CPU", 1))
            return max(cpus + 1 + n_jobs, 1)
        return n_jobs

    def configure(self, n_jobs: int | None = 1, parallel: Any = None, prefer: Any = None,
                  require: Any = None, **pool_options: Any) -> int:
        """A pool for this `Parallel` run (even for one job: it still runs on the mesh).
        Task options given to `parallel_backend("p2pexec", num_cpus=...)` reach its
        tasks; joblib's memory-mapping options (`max_nbytes`, `mmap_mode`...) do not
        apply, since large arrays travel as p2pexec objects in shared memory."""
        n_jobs = self.effective_n_jobs(n_jobs)
        self.parallel = parallel
        options = {**self.backend_kwargs, **pool_options}
        self._pool = Pool(n_jobs, **{key: value for key, value in options.items()
                                     if key in api.TASK_OPTIONS})
        return n_jobs


def register_p2pexec() -> None:
    """Make `joblib.parallel_backend("p2pexec")` available."""
    register_parallel_backend(BACKEND, P2PExecBackend)
