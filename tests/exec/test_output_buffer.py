"""Output buffers, limits and job ids (sans-IO): what a worker, a node and a peer hold of
what tasks print, and what they refuse."""

from __future__ import annotations

import io

import pytest

from p2pexec.errors import RemoteProtocolError
from p2pexec.exec.output import (
    MAX_LINE,
    STDERR,
    STDOUT,
    Output,
    OutputBuffer,
    OutputLimits,
    OutputLines,
    job_home,
    job_id,
    print_output,
    render,
)
from p2pexec.net.codec import Codec
from p2pexec.net.config import CodecLimits

NODE = bytes(range(32))
JOB = job_id(NODE, -3)


def test_a_job_names_its_home_node_and_driver():
    assert job_home(JOB) == (NODE, -3)
    assert job_home(job_id(NODE, 0)) == (NODE, 0)
    assert job_home(b"") is None


def test_whole_lines_are_kept_in_order_and_a_partial_one_waits_for_its_end():
    buffer = OutputBuffer(pid=7)
    assert not buffer.pending
    buffer.write(JOB, "f", STDOUT, "a")
    assert not buffer.pending  # no whole line yet
    buffer.write(JOB, "f", STDOUT, "b\nc\n")
    buffer.write(JOB, "g", STDERR, "oops\n")
    buffer.write(JOB, "f", STDOUT, "d\n")
    assert buffer.pending
    assert buffer.take() == [OutputLines(JOB, "f", 7, "", STDOUT, ["ab", "c"]),
                             OutputLines(JOB, "g", 7, "", STDERR, ["oops"]),
                             OutputLines(JOB, "f", 7, "", STDOUT, ["d"])]
    assert not buffer.pending and buffer.take() == []


def test_two_tasks_writing_at_once_never_share_a_line():
    buffer = OutputBuffer(pid=1)
    buffer.write(JOB, "f", STDOUT, "f-start ")
    buffer.write(JOB, "g", STDOUT, "g-start ")
    buffer.write(JOB, "f", STDOUT, "f-end\n")
    buffer.write(JOB, "g", STDOUT, "g-end\n")
    assert [(r.name, r.lines) for r in buffer.take()] == [("f", ["f-start f-end"]),
                                                         ("g", ["g-start g-end"])]


def test_unfinished_lines_of_many_sources_are_bounded():
    buffer = OutputBuffer(OutputLimits(max_records=2))
    for name in ("a", "b", "c"):
        buffer.write(JOB, name, STDOUT, "no end")
    assert [(r.name, r.lines) for r in buffer.take()] == [("a", ["no end"])]


def test_a_line_without_end_is_cut_at_the_limit():
    buffer = OutputBuffer()
    buffer.write(JOB, "f", STDOUT, "x" * (MAX_LINE + 10))
    [record] = buffer.take()
    assert record.lines == ["x" * MAX_LINE + " [line cut]"]


def test_long_names_are_cut_so_that_what_a_buffer_sends_passes_the_check():
    buffer = OutputBuffer()
    buffer.write(JOB, "n" * 10_000, STDOUT, "hi\n")
    buffer.add([OutputLines(JOB, "f", 1, "", STDOUT, ["x"])], node="m" * 10_000)
    OutputLimits().check(Output(buffer.take()))


def test_a_closed_stream_loses_the_lines_without_an_error():
    closed = io.StringIO()
    closed.close()
    print_output([OutputLines(JOB, "f", 1, "", STDOUT, ["hi"])], closed, closed)


def test_beyond_its_bounds_a_buffer_drops_lines_and_says_how_many():
    buffer = OutputBuffer(OutputLimits(max_lines=3), pid=5)
    for i in range(10):
        buffer.write(JOB, "f", STDOUT, f"{i}\n")
    assert buffer.take() == [OutputLines(JOB, "f", 5, "", STDOUT, ["0", "1", "2"]),
                             OutputLines(JOB, "f", 5, "", STDOUT, ["[7 lines dropped]"])]
    buffer.write(JOB, "f", STDOUT, "again\n")  # a new batch has room again
    assert buffer.take() == [OutputLines(JOB, "f", 5, "", STDOUT, ["again"])]


def test_a_rate_limit_keeps_bursts_and_then_so_many_lines_a_second():
    now = [0.0]
    buffer = OutputBuffer(OutputLimits(max_lines=5, lines_per_second=10.0),
                          clock=lambda: now[0])
    for i in range(8):
        buffer.write(JOB, "f", STDOUT, f"{i}\n")
    assert [r.lines for r in buffer.take()] == [["0", "1", "2", "3", "4"],
                                                ["[3 lines dropped]"]]
    now[0] = 0.3  # three more lines' worth
    for i in range(5):
        buffer.write(JOB, "f", STDOUT, f"{i}\n")
    assert [r.lines for r in buffer.take()] == [["0", "1", "2"], ["[2 lines dropped]"]]


def test_records_passed_on_are_marked_with_the_node_that_ran_them():
    buffer = OutputBuffer()
    buffer.add([OutputLines(JOB, "f", 9, "", STDOUT, ["hi"])], node="thief")
    [record] = buffer.take()
    assert record.node == "thief"
    assert render([record]) == ("(f pid=9, node=thief) hi\n", "")
    assert render([OutputLines(JOB, "f", 9, "", STDERR, ["a", "b"])]) == (
        "", "(f pid=9) a\n(f pid=9) b\n")


def test_what_a_buffer_sends_passes_the_check_and_the_codec():
    limits = OutputLimits(max_lines=4)
    buffer = OutputBuffer(limits)
    for i in range(9):
        buffer.write(JOB, f"task{i % 3}", STDOUT, f"{i}\n")
    message = Output(buffer.take())
    limits.check(message)
    codec = Codec(CodecLimits())
    assert codec.decode(codec.frame(message)[4:]) == message


@pytest.mark.parametrize("record", [
    OutputLines(JOB, "f" * 10_000, 1, "", STDOUT, ["hi"]),
    OutputLines(b"j" * 1000, "f", 1, "", STDOUT, ["hi"]),
    OutputLines(JOB, "f", 1, "", 3, ["hi"]),
    OutputLines(JOB, "f", 1, "", STDOUT, ["x" * (MAX_LINE + 100)]),
    OutputLines(JOB, "f", 1, "", STDOUT, ["x"] * 20_000),
])
def test_a_message_no_buffer_would_send_is_refused(record: OutputLines):
    with pytest.raises(RemoteProtocolError):
        OutputLimits().check(Output([record]))
