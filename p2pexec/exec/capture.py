"""A worker's stdout and stderr, captured for the driver that owns the work printing.

Two levels, as Ray's log monitor catches both: `sys.stdout` and `sys.stderr` become
`TaskStream`s, which attribute each write to the work running in the writing thread
(`TaskRunner.current()`, a context variable, so concurrent actor calls and nested tasks
are told apart), and file descriptors 1 and 2 become pipes read by a thread, which
catches C extensions, `os.write` and subprocesses. Output another thread writes, at
either level, belongs to the work on top of the main thread's stack at the time it is
read (until its result is sent, so a tiny task's last `os.write` may be read too late and
count as the worker's own); an actor's worker attributes everything to the actor.

Lines wait in the runtime's `OutputBuffer`; they ride on the next message the worker
sends (so a task's lines reach the node before its result) or go alone `FLUSH_DELAY`
after they were written. While the main thread waits in a get (it holds the link),
lines wait too, bounded by the buffer's limits.
"""

from __future__ import annotations

import codecs
import io
import os
import sys
import threading
import time
import types
from typing import TYPE_CHECKING, Any, TextIO

from p2pexec.exec import protocol as p
from p2pexec.exec.output import STDERR, STDOUT, Output, OutputBuffer
from p2pexec.exec.runner import TaskRunner
from p2pexec.exec.task import ACTOR_CREATE

if TYPE_CHECKING:
    from p2pexec.exec.worker import WorkerRuntime

FLUSH_DELAY = 0.02
"""Seconds written lines wait for a message to ride on before they are sent alone: a
print loop costs the node ~50 messages a second, not one per print."""


class Attribution:
    """Which work what a thread writes or submits belongs to: the actor's creation in an
    actor's worker, else the work this thread runs, else (another thread) the work on
    top of the main thread's stack; None between tasks. `execute_code` is the code of
    the worker's `execute(work)`, whose frame lasts until the work's result is sent (a
    context variable cannot be read from another thread; a frame can)."""

    def __init__(self, runner: TaskRunner, execute_code: types.CodeType) -> None:
        self.runner = runner
        self.execute_code = execute_code

    def work(self) -> p.Execute | None:
        work, actor = self.runner.current()
        if actor is not None:
            return actor
        return work if work is not None else self._main_thread_work()

    def _main_thread_work(self) -> p.Execute | None:
        frame = sys._current_frames().get(threading.main_thread().ident)
        while frame is not None:
            if frame.f_code is self.execute_code:
                return frame.f_locals.get("work")
            frame = frame.f_back
        return None

    def label(self) -> tuple[bytes, str]:
        """(job, name) of what the calling thread writes: a task's name, an actor's
        class."""
        work = self.work()
        if work is None:
            return b"", "worker"
        if work.kind == ACTOR_CREATE:
            return work.job, work.name.removesuffix(".__init__")
        return work.job, work.name


class TaskStream(io.TextIOBase):
    """`sys.stdout` or `sys.stderr` of a worker: text goes to the output buffer, marked
    with the work that wrote it. Bytes (`.buffer`) and `fileno()` reach the captured
    file descriptor."""

    def __init__(self, attribution: Attribution, output: OutputBuffer, stream: int,
                 raw: TextIO) -> None:
        self._attribution = attribution
        self._output = output
        self._stream = stream
        self._raw = raw

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        job, name = self._attribution.label()
        self._output.write(job, name, self._stream, text)
        return len(text)

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return self._raw.fileno()

    @property
    def buffer(self) -> Any:
        return self._raw.buffer

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return self._raw.encoding

    @property
    def errors(self) -> str | None:  # type: ignore[override]
        return self._raw.errors


def capture_output(runtime: WorkerRuntime) -> None:
    """From now on what this worker prints, at the Python or the file descriptor level,
    goes to its node through `runtime.output`."""
    output, attribution = runtime.output, runtime.attribution
    for fd, stream in ((1, STDOUT), (2, STDERR)):
        read_end, write_end = os.pipe()
        os.dup2(write_end, fd)
        os.close(write_end)
        threading.Thread(target=_read_fd, args=(read_end, stream, attribution, output),
                         daemon=True, name=f"p2pexec-fd{fd}").start()
    sys.stdout = TaskStream(attribution, output, STDOUT, sys.stdout)
    sys.stderr = TaskStream(attribution, output, STDERR, sys.stderr)
    threading.Thread(target=_send_alone, args=(runtime,), daemon=True,
                     name="p2pexec-output").start()


def _read_fd(fd: int, stream: int, attribution: Attribution, output: OutputBuffer) -> None:
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    while data := os.read(fd, 1 << 16):
        text = decoder.decode(data)
        if text:
            output.write(*attribution.label(), stream, text)


def _send_alone(runtime: WorkerRuntime) -> None:
    """Lines no message took within `FLUSH_DELAY` go alone (under the link's lock, but
    without the main thread's bookkeeping: this thread never runs task code)."""
    output, link = runtime.output, runtime.link
    while True:
        output.wait()
        time.sleep(FLUSH_DELAY)
        with runtime.lock:
            if not output.pending:
                continue
            try:
                link.sock.sendall(link.codec.frame(Output(output.take())))
            except OSError:  # the node is gone; the main thread ends the worker
                return
