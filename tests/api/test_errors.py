"""What users see when tasks fail, workers die or arguments cannot travel."""

import os
import signal
import threading

import pytest

import p2pexec as px

pytestmark = pytest.mark.usefixtures("cluster")


class CustomError(Exception):
    def __init__(self, code):
        super().__init__(f"code {code}")
        self.code = code


@px.remote
def fail_with_value_error(x):
    raise ValueError(f"bad value {x}")


def test_task_exception_is_both_task_error_and_original_type():
    ref = fail_with_value_error.remote(7)
    with pytest.raises(ValueError) as info:
        px.get(ref)
    error = info.value
    assert isinstance(error, px.TaskError)
    assert "bad value 7" in str(error)
    assert "Remote traceback" in str(error)
    assert "fail_with_value_error" in error.remote_traceback
    assert isinstance(error.cause, ValueError)


def test_custom_exception_keeps_its_attributes():
    @px.remote
    def fail():
        raise CustomError(42)

    with pytest.raises(CustomError) as info:
        px.get(fail.remote())
    assert info.value.code == 42
    assert isinstance(info.value, px.TaskError)


def test_error_propagates_through_dependent_tasks():
    @px.remote
    def plus_one(x):
        return x + 1

    with pytest.raises(ValueError):
        px.get(plus_one.remote(fail_with_value_error.remote(1)))


def test_application_errors_are_not_retried_unless_asked(tmp_path):
    marker = tmp_path / "count"

    @px.remote
    def flaky(path):
        with open(path, "a") as f:
            f.write("x")
        if len(open(path).read()) < 3:
            raise RuntimeError("not yet")
        return "ok"

    with pytest.raises(RuntimeError):
        px.get(flaky.remote(str(marker)))
    assert marker.read_text() == "x"
    marker.unlink()
    assert px.get(flaky.options(retry_exceptions=True, max_retries=3).remote(str(marker))) == "ok"
    assert marker.read_text() == "xxx"


def test_worker_crash_is_retried_then_raises_worker_crashed(tmp_path):
    marker = tmp_path / "attempts"

    @px.remote(max_retries=2)
    def die(path):
        with open(path, "a") as f:
            f.write("x")
        os._exit(3)

    with pytest.raises(px.WorkerCrashedError, match="3 attempts"):
        px.get(die.remote(str(marker)), timeout=60)
    assert marker.read_text() == "xxx"  # one run plus two retries


def test_crash_then_success_on_retry(tmp_path):
    marker = tmp_path / "once"

    @px.remote
    def crash_once(path):
        if not os.path.exists(path):
            open(path, "w").close()
            os.kill(os.getpid(), signal.SIGSEGV)
        return "survived"

    assert px.get(crash_once.remote(str(marker)), timeout=60) == "survived"


def test_pool_recovers_after_crashes():
    @px.remote(max_retries=0)
    def die():
        os._exit(1)

    @px.remote
    def square(x):
        return x * x

    with pytest.raises(px.WorkerCrashedError):
        px.get(die.remote(), timeout=60)
    assert px.get([square.remote(i) for i in range(20)], timeout=60) == [i * i for i in range(20)]


def test_unpicklable_argument_names_the_argument():
    @px.remote
    def use(a, lock=None):
        return a

    with pytest.raises(px.SerializationError, match=r"keyword argument 'lock'.*lock"):
        use.remote(1, lock=threading.Lock())
    with pytest.raises(px.SerializationError, match=r"argument 0 of .*use"):
        use.remote(threading.Lock())


def test_unpicklable_return_value_is_a_task_error():
    @px.remote
    def make_lock():
        return threading.Lock()

    with pytest.raises(px.TaskError, match="could not pickle the return value"):
        px.get(make_lock.remote())


@px.remote
def divide_by_zero():
    return 1 / 0


@px.remote
def call_divide_by_zero():
    return px.get(divide_by_zero.remote())


def test_exception_two_tasks_deep_keeps_the_original_type():
    with pytest.raises(ZeroDivisionError) as info:
        px.get(call_divide_by_zero.remote())
    error = info.value
    assert isinstance(error, px.TaskError)
    assert isinstance(error.cause, ZeroDivisionError)
    assert "call_divide_by_zero" in str(error)
    assert "divide_by_zero" in error.remote_traceback


@px.remote
def echo_keywords(**kwargs):
    return sorted(kwargs.items())


def test_user_keywords_named_like_the_api_parameters_pass_through():
    assert px.get(echo_keywords.remote(self=1, fn=2, options=3)) == [
        ("fn", 2), ("options", 3), ("self", 1)]
    assert px.get(echo_keywords.options(name="echo").remote(self=4)) == [("self", 4)]

    @px.remote
    class Keeper:
        def __init__(self, **kwargs):
            self.kwargs = kwargs

        def keep(self, **kwargs):
            return sorted({**self.kwargs, **kwargs}.items())

    keeper = Keeper.remote(options=1)  # (`self` would clash in plain Python too)
    assert px.get(keeper.keep.remote(fn=3)) == [("fn", 3), ("options", 1)]
    assert px.get(Keeper.options(num_cpus=0).remote(fn=5).keep.remote()) == [("fn", 5)]


@px.remote
class Greeter:
    def __init__(self, greeting, *, punctuation="!"):
        self.greeting, self.punctuation = greeting, punctuation

    def greet(self, name, times=1):
        return " ".join([f"{self.greeting} {name}{self.punctuation}"] * times)

    @staticmethod
    def shout(text):
        return text.upper()


@px.remote
def pair(a, b=0, /, *, c):
    return (a, b, c)


@px.remote
def greet_with(greeter, name):
    return px.get(greeter.greet.remote(name))


def test_arguments_that_do_not_fit_the_signature_fail_at_remote_as_in_ray():
    with pytest.raises(TypeError, match=r"pair.*missing a required argument: 'c'"):
        pair.remote(1)
    with pytest.raises(TypeError, match="too many positional arguments"):
        pair.remote(1, 2, 3, c=4)
    assert px.get(pair.remote(1, c=3)) == (1, 0, 3)
    with pytest.raises(TypeError, match=r"Greeter.*greeting"):
        Greeter.remote()
    greeter = Greeter.remote("hello", punctuation="?")
    with pytest.raises(TypeError, match=r"Greeter.greet.*missing a required argument: 'name'"):
        greeter.greet.remote(nme="x")
    with pytest.raises(AttributeError, match="no method 'gret'"):
        greeter.gret.remote("x")
    assert px.get(greeter.greet.remote("px", times=2)) == "hello px? hello px?"
    assert px.get(greeter.shout.remote("a")) == "A"
    with pytest.raises(TypeError, match=r"Greeter.shout"):
        greeter.shout.remote()
    assert px.get(greet_with.remote(greeter, "task")) == "hello task?"  # a handle travels


def test_an_async_function_cannot_be_a_task():
    async def fetch():
        return 1

    with pytest.raises(px.LocalUsageError, match=r"async function.*asyncio.run"):
        px.remote(fetch)
