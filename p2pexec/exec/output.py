"""What tasks and actors print, on its way to the driver that owns them. Sans-IO.

Every driver has a job id: the raw id of the node it attached to (or is embedded in) and
its holder id there (`DRIVER` 0 for the embedded driver, negative for attached ones).
Submitters stamp it on each `TaskSpec`; a worker stamps the job of the work it runs on
the tasks that work submits, and an actor's output and submissions carry its creation's
job. So any node can tell where a line goes from the line alone, long after the task
that printed it finished, and without asking anyone: to a driver of its own, or to the
job's home node, which hands it to the driver.

One message carries output on every hop (worker -> node, node -> peer, node -> driver):
`Output`, a list of `OutputLines` records (one task or actor, one stream, whole lines).
`OutputBuffer` batches them, bounded in lines and bytes: beyond the bound lines are
dropped and counted, and the count goes on as a "[N lines dropped]" line.
"""

from __future__ import annotations

import struct
import sys
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TextIO

from p2pexec.errors import RemoteProtocolError
from p2pexec.net.codec import message

STDOUT, STDERR = 1, 2

MAX_LINE = 16 * 1024
"""Characters kept of one line; the rest of a longer one is cut (and marked so)."""
MAX_NAME = 512
"""Characters of a task or actor name a message may carry."""
JOB_SUFFIX = struct.Struct(">i")
"""The holder id at the end of a job id (after the home node's raw id)."""
MAX_JOB = 64 + JOB_SUFFIX.size


@message(171)
@dataclass(frozen=True, slots=True)
class OutputLines:
    """Whole lines one task or actor (`name`, in process `pid`) wrote to one stream.
    `node`: the name of the node that ran it, set when the lines leave that node."""

    job: bytes
    name: str
    pid: int
    node: str
    stream: int
    lines: list[str]


@message(170)
@dataclass(frozen=True, slots=True)
class Output:
    """A batch of output records: worker -> its node, node -> the job's home node, and
    node -> a driver's output stream (where an empty one first says it is open)."""

    records: list[OutputLines]


def job_id(node_id: bytes, holder: int) -> bytes:
    """The job of the driver with holder id `holder` on node `node_id`."""
    return node_id + JOB_SUFFIX.pack(holder)


def job_home(job: bytes) -> tuple[bytes, int] | None:
    """(home node raw id, driver holder id) of a job; None for no job (b"")."""
    if len(job) < JOB_SUFFIX.size:
        return None
    return job[:-JOB_SUFFIX.size], JOB_SUFFIX.unpack(job[-JOB_SUFFIX.size:])[0]


@dataclass(frozen=True)
class OutputLimits:
    """What one buffer holds between two flushes; the rest is dropped and counted."""

    max_lines: int = 10_000
    max_bytes: int = 1 << 20
    max_records: int = 1_000
    """Records in one message (a peer or worker sending more is dropped)."""
    lines_per_second: float = 0.0
    """Lines kept per second on average, in bursts of up to `max_lines` (0: no rate,
    only the bounds): what a print loop may cost the nodes and the driver's terminal."""

    def check(self, msg: Output) -> None:
        """Refuse a message no buffer with these limits would send: a bad worker or peer
        costs its own connection (`RemoteProtocolError`), never the node's memory."""
        records = msg.records
        if len(records) > 2 * self.max_records:  # kept ones, then dropped-lines notices
            raise RemoteProtocolError(f"an output message of {len(records)} records")
        lines = 0
        for record in records:
            if len(record.job) > MAX_JOB or len(record.name) > MAX_NAME or len(
                    record.node) > MAX_NAME or record.stream not in (STDOUT, STDERR):
                raise RemoteProtocolError("an output record with a bad job, name, node or "
                                          "stream")
            lines += len(record.lines)
            if any(len(line) > MAX_LINE + 32 for line in record.lines):
                raise RemoteProtocolError("an output line over the length limit")
        if lines > self.max_lines + len(records):  # + one dropped-lines notice each
            raise RemoteProtocolError(f"an output message of {lines} lines")


WORKER_LIMITS = OutputLimits(lines_per_second=10_000.0)
"""A worker's buffer: a task printing in a tight loop shows 10,000 lines a second."""


class OutputBuffer:
    """Output records waiting for their next hop, in the order they were written, at
    most `limits` of them; thread-safe (a worker's threads print into one buffer).

    `write` takes raw text and keeps each stream's unfinished line until its newline,
    `add` takes whole records. `pending` says whether `take` has anything: read
    without the lock, so that a hot path that printed nothing pays one attribute.
    `clock` (seconds) is needed with a rate limit."""

    def __init__(self, limits: OutputLimits | None = None, pid: int = 0,
                 clock: Callable[[], float] | None = None) -> None:
        self.limits = limits or OutputLimits()
        self.pid = pid
        self._clock = clock
        self._tokens = float(self.limits.max_lines)
        self._counted = clock() if clock is not None else 0.0
        self.pending = False
        self._records: list[OutputLines] = []
        self._lines = 0
        self._bytes = 0
        self._dropped: dict[tuple[bytes, str, int, str, int], int] = {}
        self._partial: dict[tuple[bytes, str, int], str] = {}
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)

    def write(self, job: bytes, name: str, stream: int, text: str) -> None:
        """Text a task or actor wrote; its whole lines are kept (within the limits)."""
        name = name[:MAX_NAME]  # a long options(name=...) is cut, not refused downstream
        key = (job, name, stream)
        with self._lock:
            partial = self._partial.pop(key, "")
            if "\n" not in text:
                if len(partial) + len(text) <= MAX_LINE:
                    self._partial[key] = partial + text
                    if len(self._partial) > self.limits.max_records:
                        oldest = next(iter(self._partial))  # waits no more: a line now
                        self._keep(oldest[0], oldest[1], self.pid, "", oldest[2],
                                   [self._partial.pop(oldest)])
                    return
                text += "\n"  # too long to wait for its end
            *lines, rest = (partial + text).split("\n")
            if rest:
                self._partial[key] = rest
            self._keep(job, name, self.pid, "", stream, [_cut(line) for line in lines])

    def add(self, records: Iterable[OutputLines], node: str | None = None) -> None:
        """Records from another buffer; `node` names the node they ran on if given."""
        if node is not None:
            node = node[:MAX_NAME]
        with self._lock:
            for r in records:
                self._keep(r.job, r.name, r.pid, r.node if node is None else node, r.stream,
                           r.lines)

    def _keep(self, job: bytes, name: str, pid: int, node: str, stream: int,
              lines: list[str]) -> None:
        limits = self.limits
        size = sum(map(len, lines))
        if (self._lines + len(lines) > limits.max_lines
                or self._bytes + size > limits.max_bytes
                or len(self._records) >= limits.max_records
                or (limits.lines_per_second and not self._within_rate(len(lines)))):
            key = (job, name, pid, node, stream)
            if key not in self._dropped and len(self._dropped) >= limits.max_records:
                key = (b"", "other output", pid, node, stream)  # notices stay bounded
            self._dropped[key] = self._dropped.get(key, 0) + len(lines)
        else:
            self._lines += len(lines)
            self._bytes += size
            last = self._records[-1] if self._records else None
            if last is not None and (last.job, last.name, last.pid, last.node,
                                     last.stream) == (job, name, pid, node, stream):
                last.lines.extend(lines)
            else:
                self._records.append(OutputLines(job, name, pid, node, stream, list(lines)))
        if not self.pending:
            self.pending = True
            self._wake.notify()

    def _within_rate(self, count: int) -> bool:
        """Take `count` lines from the token bucket, if it holds that many."""
        assert self._clock is not None, "a rate limit needs a clock"
        now = self._clock()
        tokens = min(float(self.limits.max_lines),
                     self._tokens + (now - self._counted) * self.limits.lines_per_second)
        self._counted = now
        if tokens < count:
            self._tokens = tokens
            return False
        self._tokens = tokens - count
        return True

    def take(self) -> list[OutputLines]:
        """Everything kept so far, then a "[N lines dropped]" record per source that lost
        lines; the buffer starts empty again."""
        with self._lock:
            records, self._records = self._records, []
            dropped, self._dropped = self._dropped, {}
            self._lines = self._bytes = 0
            self.pending = False
        for (job, name, pid, node, stream), count in dropped.items():
            records.append(OutputLines(job, name, pid, node, stream,
                                       [f"[{count} lines dropped]"]))
        return records

    def wait(self, timeout: float | None = None) -> bool:
        """Block until something is pending (a flushing thread); True if it is."""
        with self._lock:
            return self._wake.wait_for(lambda: self.pending, timeout)


def _cut(line: str) -> str:
    return line if len(line) <= MAX_LINE else line[:MAX_LINE] + " [line cut]"


def prefix(record: OutputLines) -> str:
    """Ray's attribution: `(name pid=123)`, and from another node `(name pid=123,
    node=its-name)`."""
    where = f", node={record.node}" if record.node else ""
    return f"({record.name} pid={record.pid}{where}) "


def render(records: Iterable[OutputLines]) -> tuple[str, str]:
    """(stdout text, stderr text) of `records`, each line prefixed, whole lines only."""
    out: list[str] = []
    err: list[str] = []
    for record in records:
        head = prefix(record)
        (err if record.stream == STDERR else out).extend(
            f"{head}{line}\n" for line in record.lines)
    return "".join(out), "".join(err)


def print_output(records: list[OutputLines], stdout: TextIO | None = None,
                 stderr: TextIO | None = None) -> None:
    """Write `records` to this process's streams (default: sys.stdout and sys.stderr as
    they are now, so redirections apply), one write per stream. The one I/O here. A
    stream that is closed or broken loses the lines: output never stops the node."""
    out, err = render(records)
    for text, stream in ((out, stdout or sys.stdout), (err, stderr or sys.stderr)):
        if text and stream is not None:
            try:
                stream.write(text)
                stream.flush()
            except (OSError, ValueError):  # closed, or a reader that went away
                pass
