"""`exec/interrupts.py`: Ctrl-C held off inside a section of the main thread, raised as it
ends, let in while the thread polls; a program's own SIGINT handler left alone."""

import os
import select
import signal
import threading

import pytest

from p2pexec.exec import interrupts

pytestmark = pytest.mark.skipif(threading.current_thread() is not threading.main_thread(),
                                reason="only the main thread gets KeyboardInterrupt")


@pytest.fixture
def default_handler():
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    interrupts._state.installed = False
    yield
    signal.signal(signal.SIGINT, previous)
    interrupts._state.installed = False


def test_a_ctrl_c_inside_a_section_is_raised_as_it_ends(default_handler):
    reached = []
    with pytest.raises(KeyboardInterrupt):
        with interrupts.held:
            with interrupts.held:  # nested: raised when the outer one ends
                signal.raise_signal(signal.SIGINT)
                reached.append("inner")
            reached.append("outer")
    assert reached == ["inner", "outer"]
    with interrupts.held:  # nothing left over for the next section
        pass


def test_a_ctrl_c_is_let_in_while_the_section_polls(default_handler):
    read, write = os.pipe()  # nothing is ever written: only Ctrl-C ends the poll
    poller = select.poll()
    poller.register(read, select.POLLIN)
    threading.Timer(0.05, signal.pthread_kill,
                    (threading.main_thread().ident, signal.SIGINT)).start()
    with pytest.raises(KeyboardInterrupt), interrupts.held:
        interrupts.interruptible_poll(poller, 5000)  # ended by Ctrl-C, not the 5 s
    with pytest.raises(KeyboardInterrupt), interrupts.held:
        signal.raise_signal(signal.SIGINT)  # noted while held...
        interrupts.interruptible_poll(poller, 5000)  # ...raised before any wait
    os.close(read)
    os.close(write)


def test_a_programs_own_handler_is_left_alone():
    calls = []
    previous = signal.signal(signal.SIGINT, lambda *_: calls.append(1))
    interrupts._state.installed = False
    try:
        with interrupts.held:
            signal.raise_signal(signal.SIGINT)
        assert calls == [1]  # its handler ran at once: nothing was held off
    finally:
        signal.signal(signal.SIGINT, previous)
        interrupts._state.installed = False
