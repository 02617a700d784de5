"""Sharded parameter servers: synchronous data-parallel SGD of a softmax classifier.

The model is a (features x classes) weight matrix, split by rows into `--servers`
shards, each held by a parameter-server actor. The synthetic dataset (labels drawn from
a random "teacher" model) is split into `--workers` partitions. The driver puts each
partition into the object store once and hands its ref to a data-worker actor, which
keeps the arrays (mapped from shared memory, or fetched once to its machine): the data
never moves again. Both kinds of actor are spread over the machines.

Each step is a small dataflow graph that the driver wires and never waits inside: every
server's `pull` gives one object (the shard and the step it belongs to), which all the
workers read; each worker computes the loss and gradient on its partition and returns
the gradient cut into one slice per server; each server's `apply` takes the slices for
its shard straight from the workers (refs passed as arguments: the arrays go from
worker to server, not through the driver) and steps by their mean. Summed in worker
order, the update does not depend on which worker finished first, so a run is exactly
reproducible from `--seed`. After `--steps` steps the program exits with status 1
unless the training loss is below `--target`.

Run it embedded (one node in this process), or on a running cluster:

    python examples/parameter_server.py                         # embedded
    python examples/parameter_server.py --address /tmp/n1       # a `p2pexec join`'s data dir
    python examples/parameter_server.py --features 256 --classes 8 --samples 2048 \\
        --workers 4 --servers 2 --steps 12 --target 1.2          # small

`--address` goes straight to `px.init(address=...)`: for p2pexec a node's data dir
("auto" for the node of $P2PEXEC_DATA_DIR); for Ray (swap the import line for
`import ray as px`) a cluster address such as 127.0.0.1:6379. Without it, `px.init()`
attaches to the node running on this machine, if any, and otherwise starts one.

Failures: the actors are declared with `max_restarts=-1` (restart whenever their
process or machine dies) and `max_task_retries=-1` (calls caught by a death run again on
the new incarnation). A restarted data worker gets its partition again from its
constructor's argument (the driver owns the object). A restarted server starts from
scratch, at step 0 with zero weights; its state is rebuilt by the driver, which keeps
the shards that the last completed step returned. Every server tells the step it is
at: when one is not where it should be (a worker was given a stale shard, or an update
a missing gradient), the driver puts every server back to the last completed step and
runs the step again, which gives the same update.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

import p2pexec as px


@px.remote(max_restarts=-1, max_task_retries=-1, scheduling_strategy="SPREAD")
class ParameterServer:
    """One shard of the weights, and the step it is at."""

    def __init__(self, rows: int, classes: int) -> None:
        self.step = 0
        self.weights = np.zeros((rows, classes), dtype=np.float32)

    def pull(self) -> tuple[int, np.ndarray]:
        return self.step, self.weights

    def apply(self, step: int, learning_rate: float, *gradients: np.ndarray | None
              ) -> tuple[int, np.ndarray | None]:
        """Apply the mean of the workers' gradients for this shard (summed in worker
        order: the same result whatever order they came in). Answers (step reached, new
        shard), or (its step, None) when it is not at `step` or a gradient is missing."""
        if step != self.step or any(g is None for g in gradients):
            return self.step, None
        total = sum(gradients[1:], gradients[0])
        self.weights = self.weights - np.float32(learning_rate / len(gradients)) * total
        self.step += 1
        return self.step, self.weights

    def restore(self, step: int, weights: np.ndarray) -> None:
        self.step, self.weights = step, np.array(weights)


@px.remote(max_restarts=-1, max_task_retries=-1, scheduling_strategy="SPREAD")
class DataWorker:
    """One partition of the dataset, and the gradient of the loss on it."""

    def __init__(self, partition: tuple[np.ndarray, np.ndarray]) -> None:
        self.features, self.labels = partition  # mapped from the object store, read-only

    def gradient(self, step: int, *pulled: tuple[int, np.ndarray]) -> tuple:
        """The loss on this partition and the gradient, cut into one slice per server;
        all None when a server was not at `step` (it restarted: the driver restores it)."""
        if any(at != step for at, _ in pulled):
            return (None,) * (1 + len(pulled))
        weights = np.concatenate([shard for _, shard in pulled])
        logits = self.features @ weights
        logits -= logits.max(axis=1, keepdims=True)
        probabilities = np.exp(logits)
        probabilities /= probabilities.sum(axis=1, keepdims=True)
        rows = np.arange(len(self.labels))
        loss = float(-np.log(probabilities[rows, self.labels] + 1e-12).mean())
        probabilities[rows, self.labels] -= 1.0
        gradient = self.features.T @ probabilities / np.float32(len(self.labels))
        bounds = np.cumsum([0] + [shard.shape[0] for _, shard in pulled])
        return (loss, *(gradient[bounds[i]:bounds[i + 1]] for i in range(len(pulled))))


def dataset(samples: int, features: int, classes: int, seed: int
            ) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian features; labels from a random linear teacher, with Gumbel noise."""
    rng = np.random.default_rng(seed)
    teacher = rng.normal(size=(features, classes)).astype(np.float32)
    x = rng.normal(size=(samples, features)).astype(np.float32)
    logits = x @ teacher * np.float32(3.0 / np.sqrt(features))
    y = (logits + rng.gumbel(size=logits.shape)).argmax(axis=1)
    return x, y


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", help="cluster to attach to (passed to px.init)")
    parser.add_argument("--features", type=int, default=2048)
    parser.add_argument("--classes", type=int, default=32)
    parser.add_argument("--samples", type=int, default=16384)
    parser.add_argument("--servers", type=int, default=4, help="parameter-server shards")
    parser.add_argument("--workers", type=int, default=8, help="data partitions")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--learning-rate", type=float, default=3.0)
    parser.add_argument("--target", type=float, default=0.5,
                        help="fail unless the last step's training loss is below this")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    started = time.perf_counter()
    px.init(address=args.address)
    connected = time.perf_counter()
    x, y = dataset(args.samples, args.features, args.classes, args.seed)
    workers = [DataWorker.remote(px.put((x[part], y[part])))
               for part in np.array_split(np.arange(args.samples), args.workers)]
    rows = [len(r) for r in np.array_split(np.arange(args.features), args.servers)]
    servers = [ParameterServer.remote(r, args.classes) for r in rows]
    shards = [np.zeros((r, args.classes), dtype=np.float32) for r in rows]  # step 0
    print(f"training a {args.features}x{args.classes} softmax classifier on "
          f"{args.samples} samples: {args.workers} workers, {args.servers} parameter "
          f"servers, {args.steps} steps", flush=True)

    step, redone, loss = 0, 0, float("nan")
    while step < args.steps:
        pulled = [server.pull.remote() for server in servers]  # one object per shard
        outputs = [worker.gradient.options(num_returns=1 + args.servers).remote(
            step, *pulled) for worker in workers]
        applied = px.get([server.apply.remote(step, args.learning_rate,
                                              *[out[1 + i] for out in outputs])
                          for i, server in enumerate(servers)])
        if any(shard is None for _, shard in applied):
            # a server restarted from scratch: put them all back to this step, redo it
            px.get([server.restore.remote(step, shard)
                    for server, shard in zip(servers, shards, strict=True)])
            redone += 1
            print(f"step {step}: a parameter server restarted; restored every shard "
                  f"to step {step} and running it again", flush=True)
            continue
        shards = [shard for _, shard in applied]
        loss = float(np.mean(px.get([out[0] for out in outputs])))
        step += 1
        if step == 1 or step % 5 == 0 or step == args.steps:
            print(f"step {step:4d}  loss {loss:.4f}  "
                  f"{time.perf_counter() - started:6.2f} s", flush=True)

    ok = loss < args.target
    print(f"{'OK' if ok else 'FAILED'}: loss {loss:.4f} {'<' if ok else '>='} target "
          f"{args.target} after {args.steps} steps ({redone} redone); "
          f"{time.perf_counter() - started:.2f} s in all, "
          f"{connected - started:.2f} s of it in px.init", flush=True)
    px.shutdown()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
