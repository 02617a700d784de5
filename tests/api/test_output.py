"""What tasks and actors print reaches the driver's stdout and stderr, prefixed with who
printed it (Ray's log_to_driver), in drivers run in fresh interpreters."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap


def run_driver(code: str, timeout: float = 90) -> tuple[str, str]:
    """Run a driver script; assert it succeeded; (stdout, stderr)."""
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout, done.stderr


def prefixed(text: str, name: str) -> list[str]:
    """The lines of `text` a task or actor `name` printed, without their prefix."""
    return re.findall(rf"^\({re.escape(name)} pid=\d+\) (.*)$", text, re.MULTILINE)


TASKS = """
    import subprocess, sys
    import p2pexec as px

    px.init(num_cpus=2, address="local")

    @px.remote
    def shout(i):
        print("hello", i)
        print("oops", i, file=sys.stderr)
        return i

    @px.remote
    def parent():
        print("parent starts")
        return px.get(shout.remote(100))

    @px.remote
    def shell():
        subprocess.run(["echo", "from a subprocess"], check=True)
        return 0

    assert px.get([shout.remote(i) for i in range(3)]) == [0, 1, 2]
    assert px.get(parent.remote()) == 100
    assert px.get(shell.remote()) == 0
    print("driver done")
"""


def test_a_tasks_print_reaches_the_drivers_stdout_and_stderr_prefixed_with_its_name():
    out, err = run_driver(TASKS)
    assert sorted(prefixed(out, "shout")) == ["hello 0", "hello 1", "hello 100", "hello 2"]
    assert sorted(prefixed(err, "shout")) == ["oops 0", "oops 1", "oops 100", "oops 2"]
    assert prefixed(out, "parent") == ["parent starts"]  # and its child's went there too
    assert prefixed(out, "shell") == ["from a subprocess"]  # file descriptor 1 as well
    # a task's lines reach the embedded driver before its result does
    assert out.splitlines()[-1] == "driver done"
    assert out.index("hello 100") < out.index("driver done")


ACTOR = """
    import p2pexec as px

    px.init(num_cpus=2, address="local")

    @px.remote
    class Counter:
        def __init__(self):
            print("made")
            self.n = 0

        def incr(self):
            self.n += 1
            print("now", self.n)
            return self.n

    counter = Counter.remote()
    assert [px.get(counter.incr.remote()) for _ in range(2)] == [1, 2]
"""


def test_an_actors_prints_are_prefixed_with_its_class():
    out, _err = run_driver(ACTOR)
    assert prefixed(out, "Counter") == ["made", "now 1", "now 2"]


QUIET = """
    import sys
    import p2pexec as px

    px.init(num_cpus=2, address="local", log_to_driver=False)

    @px.remote
    def shout():
        print("hello")
        print("oops", file=sys.stderr)
        return 1

    assert px.get(shout.remote()) == 1
    print("driver done")
"""


def test_log_to_driver_false_shows_nothing_of_the_tasks():
    out, err = run_driver(QUIET)
    assert out == "driver done\n"
    assert "hello" not in err and "oops" not in err


FLOOD = """
    import p2pexec as px

    px.init(num_cpus=2, address="local")

    @px.remote
    def flood(n):
        for i in range(n):
            print("line", i)
        return n

    @px.remote
    def after():
        return "still serving"

    assert px.get(flood.remote(200_000)) == 200_000
    assert px.get(after.remote()) == "still serving"
"""


def test_a_task_printing_a_flood_loses_lines_with_a_notice_and_the_node_keeps_serving():
    out, _err = run_driver(FLOOD)
    lines = prefixed(out, "flood")
    shown = [line for line in lines if line.startswith("line ")]
    dropped = sum(int(n) for n in re.findall(r"^\[(\d+) lines dropped\]$", "\n".join(lines),
                                              re.MULTILINE))
    assert dropped > 0 and len(shown) < 200_000
    assert len(shown) + dropped == 200_000  # every line is either shown or counted
    assert shown[:3] == ["line 0", "line 1", "line 2"]  # in order


FORGED = """
    import p2pexec as px
    from p2pexec.exec import context
    from p2pexec.exec.output import Output, OutputLines

    px.init(num_cpus=2, address="local")

    @px.remote(max_retries=0)
    def forge():
        context.runtime.send(Output([OutputLines(b"", "x" * 100_000, 1, "", 1, ["hi"])]))
        return "sent"

    @px.remote
    def after():
        return "still serving"

    try:
        px.get(forge.remote())
    except px.WorkerCrashedError:
        print("worker dropped")
    assert px.get(after.remote()) == "still serving"
"""


def test_a_worker_sending_a_bad_output_message_is_dropped_and_the_node_keeps_serving():
    out, err = run_driver(FORGED)
    assert out.splitlines() == ["worker dropped"]
    assert "could not handle" in err and "output record" in err
