"""A worker's stdout and stderr, captured for the driver that owns the work printing.

Two levels, as Ray's log monitor catches both: `sys.stdout` and `sys.stderr` become
`TaskStream`s, which attribute each write to the work running in the writing thread
(`TaskRunner.current()`, a context variable, so concurrent actor calls and nested tasks
are told apart), and file descriptors 1 and 2 become pipes read by a thread, which
catches C extensions, `os.write` and subprocesses. Output another thread writes, at
either level, belongs to the work on top of the main thread's stack at the time it is
read, or, between tasks, to the one that finished last (Ray's rule: its log monitor
gives a line to the last task started before it); an actor's worker attributes
everything to the actor. So raw output a task wrote just before it ended, read after
the next task started, counts as the next one's.

Lines wait in the runtime's `OutputBuffer`; they ride on the next message the worker
sends (so a task's lines reach the node before its result; raw ones too for tasks of
`DRAIN_AFTER` or longer, see `RawOutput`) or go alone `FLUSH_DELAY` after they were
written. While the main thread waits in a get (it holds the link),
lines wait too, bounded by the buffer's limits.
"""

from __future__ import annotations

import codecs
import io
import os
import select
import sys
import threading
import time
import types
from typing import TYPE_CHECKING, Any, TextIO

from p2pexec.exec import protocol as p
from p2pexec.exec.output import STDERR, STDOUT, Output, OutputBuffer
from p2pexec.exec.runner import TaskRunner

if TYPE_CHECKING:
    from p2pexec.exec.worker import WorkerRuntime

FLUSH_DELAY = 0.02
"""Seconds written lines wait for a message to ride on before they are sent alone: a
print loop costs the node ~50 messages a second, not one per print."""


class Attribution:
    """Which work what a thread writes or submits belongs to: the actor in an actor's
    worker, else the work this thread runs, else (another thread) the work on top of
    the main thread's stack, else the work that finished last (`last`: its job and
    name, which the worker sets). `execute_code` is the code of the worker's
    `execute(work)`, whose frame lasts until the work's result is sent (a context
    variable cannot be read from another thread; a frame can)."""

    def __init__(self, runner: TaskRunner, execute_code: types.CodeType) -> None:
        self.runner = runner
        self.execute_code = execute_code
        self.last: tuple[bytes, str] = (b"", "worker")

    def label(self) -> tuple[bytes, str]:
        """(job, name) of what the calling thread writes or submits: a task's name, an
        actor's class."""
        work, actor = self.runner.current()
        if actor is not None:
            return actor.job, actor.name.removesuffix(".__init__")
        if work is None:
            work = self._main_thread_work()
        return (work.job, work.name) if work is not None else self.last

    def _main_thread_work(self) -> p.Execute | None:
        frame = sys._current_frames().get(threading.main_thread().ident)
        while frame is not None:
            if frame.f_code is self.execute_code:
                return frame.f_locals.get("work")
            frame = frame.f_back
        return None


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


class RawOutput:
    """File descriptors 1 and 2 as pipes, read by a thread as output arrives. The main
    thread also drains them before the result of a task that ran `DRAIN_AFTER` or
    longer (`WorkerRuntime.send`): what its subprocesses wrote is then attributed to it
    and reaches the node before its result, at the cost of one syscall per pipe for
    tasks long enough to start a process (a tiny one pays nothing)."""

    def __init__(self, attribution: Attribution, output: OutputBuffer) -> None:
        self._attribution = attribution
        self._output = output
        self._pipes: dict[int, tuple[int, codecs.IncrementalDecoder]] = {}
        """Read end -> (stream, decoder of its UTF-8, which may split a character)."""
        self._lock = threading.Lock()
        """Held while reading and attributing, so that both readers keep the order."""
        waiting = select.poll()
        for fd, stream in ((1, STDOUT), (2, STDERR)):
            read_end, write_end = os.pipe()
            os.dup2(write_end, fd)
            os.close(write_end)
            os.set_blocking(read_end, False)
            self._pipes[read_end] = (stream, codecs.getincrementaldecoder("utf-8")("replace"))
            waiting.register(read_end, select.POLLIN)
        threading.Thread(target=self._read, args=(waiting,), daemon=True,
                         name="p2pexec-fds").start()

    def _read(self, waiting: select.poll) -> None:
        while True:
            waiting.poll()
            self.drain()

    def drain(self) -> None:
        """Take what the pipes hold now."""
        with self._lock:
            for fd, (stream, decoder) in self._pipes.items():
                while True:
                    try:
                        data = os.read(fd, 1 << 16)
                    except BlockingIOError:
                        break
                    text = decoder.decode(data)
                    if text:
                        self._output.write(*self._attribution.label(), stream, text)


DRAIN_AFTER = 0.001
"""Tasks at least this long have their raw output drained before their result: starting
a process takes longer, and shorter tasks are the hot path."""


def capture_output(runtime: WorkerRuntime) -> RawOutput:
    """From now on what this worker prints, at the Python or the file descriptor level,
    goes to its node through `runtime.output`; returns the raw level's pipes."""
    output, attribution = runtime.output, runtime.attribution
    raw = RawOutput(attribution, output)
    sys.stdout = TaskStream(attribution, output, STDOUT, sys.stdout)
    sys.stderr = TaskStream(attribution, output, STDERR, sys.stderr)
    threading.Thread(target=_send_alone, args=(runtime,), daemon=True,
                     name="p2pexec-output").start()
    return raw


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
