"""mem_leak_check end to end: a corpus of leaky and clean test bodies, each on its side."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from pytest_memguard.leaks import native_allocated

from .conftest import HOOK, OPCACHE_310, Runner
from .test_plugin_budget import outcomes

CORPUS = """
import collections
import ctypes
import functools
import json
import logging
import os
import re
import sys

import pytest

pytestmark = pytest.mark.mem_leak_check

SINK = []
REGISTRY = {}
COUNTER = [0]
FILES = []
QUEUE = collections.deque()


def bump():
    COUNTER[0] += 1
    return COUNTER[0]


def test_leak_new_object():
    SINK.append(object())


def test_leak_100_bytes():
    SINK.append(b"x" * 100 + bytes(bump() % 2))


def test_leak_dict_entry():
    REGISTRY[f"key-{bump()}"] = None


def test_leak_unique_logger():
    logging.getLogger(f"memguard.corpus.{bump()}")


@functools.lru_cache(maxsize=None)
def _unbounded(key):
    return [key]


def test_leak_unbounded_lru_cache():
    _unbounded(bump())


def test_leak_producer_outruns_consumer():
    QUEUE.append(object())
    QUEUE.append(object())
    QUEUE.popleft()


SLOTS = []


def test_leak_list_slot_bytes_only():
    SLOTS.append(None)


def test_leak_fd():
    FILES.append(open(os.devnull))


_libc = ctypes.CDLL(None)
_libc.malloc.restype = ctypes.c_void_p
_libc.malloc.argtypes = [ctypes.c_size_t]


def test_leak_c_malloc():
    # Above glibc's per-thread cache (chunks up to 1 KiB): one that pytest's own run frees and
    # mallocs again each time can hide a small leak from mallinfo (seen on 3.14, see Limits).
    _libc.malloc(2048)


class Resurrect:
    def __del__(self):
        SINK.append(self)


def test_leak_resurrecting_del():
    Resurrect()


def test_leak_every_fourth_call():
    if bump() % 4 == 0:
        SINK.append(object())


def test_pass_json_round_trip():
    json.loads(json.dumps({"a": [1, 2, 3], "b": {"c": "d"}}))


def test_pass_big_list_built_and_dropped():
    data = [str(i) for i in range(20_000)]
    del data


def test_pass_same_regex():
    assert re.compile(r"(a|b)+c").match("abac")


def test_pass_lazy_import():
    import decimal
    decimal.Decimal("1.25")


def test_pass_same_logger():
    logging.getLogger("memguard.corpus.same").debug("hello")


def test_pass_file_open_close():
    with open(__file__, encoding="utf-8") as handle:
        handle.read(64)


SMALL_CACHE = {}


def test_pass_small_cache_cycling():
    SMALL_CACHE[bump() % 4] = object()


def test_pass_collectable_cycles():
    a = []
    b = [a]
    a.append(b)


@functools.lru_cache(maxsize=100)
def _bounded(key):
    return [key]


def test_pass_bounded_cache_after_filling():
    # Keys past every interpreter's small-int cache (256; 1,024 from 3.15): a counter that
    # crossed it during the check made each new entry one block bigger than the one it
    # evicted, a cache still filling for 100 runs after run ~240 (read as a leak on 3.15).
    _bounded(10**6 + bump())


@functools.lru_cache(maxsize=512)
def _shared(key):
    return {"key": key}


def _fill_shared():
    # Filled in the test's own run, before its check: under xdist no other test is sure to
    # have run in the same worker before it.
    if _shared.cache_info().currsize < 512:
        for key in range(10**6, 10**6 + 512):
            _shared(key)


def test_pass_cache_replacing_entries_older_than_the_check():
    # jsonschema's class-level lru_cache of resolvers: full of other tests' entries when the
    # check begins, one entry replaced a run.
    _fill_shared()
    _shared(10**7 + bump())


def test_leak_beside_a_cache_replacing_older_entries():
    _fill_shared()
    _shared(10**7 + bump())
    SINK.append(object())


RING = collections.deque(maxlen=40)


def test_pass_bounded_ring():
    RING.append(object())


def test_pass_string_work():
    "-".join(str(i) for i in range(200)).split("-")


def test_pass_fixture_values_reused(tmp_path):
    (tmp_path / "f.txt").write_text("x")
"""


def test_leak_corpus_each_on_its_side(
    pytester: pytest.Pytester, run: Runner, plugin_args: Sequence[str]
) -> None:
    pytester.makepyfile(test_leaks=CORPUS)
    result = run(*plugin_args, "-rA", "-p", "no:randomly")
    seen = outcomes(result)
    assert sum(name.startswith("test_leak_") for name in seen) == 12
    assert sum(name.startswith("test_pass_") for name in seen) == 13
    # A C-level leak shows only in the C library's own figure (glibc's mallinfo2).
    glibc = native_allocated() is not None
    for name, outcome in seen.items():
        # Without the hook the runs are not traced (tracemalloc's bytes cannot be made net of
        # older blocks freed): a list that only gains a slot makes no block, and its array
        # grows by too little a run for glibc's figure.
        seen_by_path = HOOK or name != "test_leak_list_slot_bytes_only"
        leaks = (
            name.startswith("test_leak_")
            and (glibc or name != "test_leak_c_malloc")
            and seen_by_path
        )
        expected = "FAILED" if leaks else "PASSED"
        assert outcome == expected, f"{name}: {outcome}\n{result.stdout.str()}"
    text = result.stdout.str()
    assert "fds" in text
    assert ("native" in text) == glibc


NATIVE_ALONE = """
import ctypes
import os

_libc = ctypes.CDLL(None)
_libc.malloc.restype = ctypes.c_void_p
_libc.malloc.argtypes = [ctypes.c_size_t]
_KEPT = (ctypes.c_void_p * 4096)()  # made before the check: no Python block grows
_COUNT = ctypes.c_size_t(0)


def _keep_native(size):
    _KEPT[_COUNT.value % 4096] = _libc.malloc(size)
    _COUNT.value += 1


def test_grows_only_with_the_thread_cache():
    # Growth in glibc's figure alone that a process started with its thread cache off does
    # not have: what that cache filling looks like to the check, without its whims.
    if "tcache_count=0" not in os.environ.get("GLIBC_TUNABLES", ""):
        _keep_native(2048)


def test_leaks_natively():
    _keep_native(2048)


def test_leaks_natively_too():
    _keep_native(2048)
"""


@pytest.mark.skipif(native_allocated() is None, reason="glibc's figure (mallinfo2)")
def test_growth_in_glibcs_figure_alone_is_checked_again_without_its_thread_cache(
    pytester: pytest.Pytester, run: Runner
) -> None:
    pytester.makepyfile(test_native=NATIVE_ALONE)
    # Two second looks a run here (the first two tests); the third failure gets none.
    pytester.makeconftest(
        "import pytest_memguard.session\npytest_memguard.session.SECOND_LOOKS = 2"
    )
    result = run("--mem-leak-check", "-rA", "-p", "no:randomly", "--junitxml=junit.xml")
    assert outcomes(result) == {
        "test_grows_only_with_the_thread_cache": "PASSED",
        "test_leaks_natively": "FAILED",
        "test_leaks_natively_too": "FAILED",
    }
    result.stdout.fnmatch_lines(
        [
            "*_ test_leaks_natively _*",
            "memory leaks: native grew over * judged runs*",
            "Failed again in a child process with glibc's per-thread malloc cache off "
            "(GLIBC_TUNABLES=glibc.malloc.tcache_count=0): not that cache filling.",
            "*_ test_leaks_natively_too _*",
            "memory leaks: native grew over * judged runs*",
            "Not checked again without glibc's per-thread malloc cache: this run did that for 2 "
            "failures already (each costs a pytest start-up).",
            "*memguard: leak checks that passed their second look*",
            "only glibc's figure grew over these tests' runs, and their check passed in a child "
            "process with glibc's per-thread malloc cache off: that cache filling, not a leak "
            "(leak.second_look in the JSON report):",
            "  test_native.py::test_grows_only_with_the_thread_cache",
        ]
    )
    junit = (pytester.path / "junit.xml").read_text()
    passed = junit.split('name="test_grows_only_with_the_thread_cache"')[1].split("</testcase>")[0]
    assert (
        'name="memguard.leak.second_look" value="passed in a child process with glibc\'s '
        "per-thread malloc cache off (GLIBC_TUNABLES=glibc.malloc.tcache_count=0): the native "
        'growth was that cache filling"' in passed
    )


@OPCACHE_310
def test_leak_report_says_growth_site_and_type(pytester: pytest.Pytester, run: Runner) -> None:
    pytester.makepyfile(
        test_one="""
        import pytest

        SINK = []

        @pytest.mark.mem_leak_check(iterations=20, warmup=3)
        def test_leaky():
            SINK.append(object())  # line 7
        """
    )
    result = run()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "memory leaks: blocks* grew over 20 judged runs (*runs in all*",
            "  blocks *+1.*/run  grew on every run",
            "  net growth over the judged runs: blocks +1.*/run*",
            "  blocks  *",
            "Where the growing memory is allocated*",
            # (tracemalloc's frames carry no function names)
            "*test_one.py:7 in test_leaky*" if HOOK else "*test_one.py:7  <- *",
            "Object types that grew (per run):",
            "*+1 * object",
        ]
    )


def test_a_re_raised_exception_is_named_as_what_keeps_the_runs_frames(
    pytester: pytest.Pytester, run: Runner
) -> None:
    """jsonschema's format tests raise one module-level exception instance again and again:
    each raise extends its traceback by the frames it passed, which keep the run's locals
    (pytest's reports among them). The report named pytest's locals; it names the exception."""
    pytester.makepyfile(
        test_boom="""
        import pytest

        BOOM = ValueError("boom")

        def boom():
            raise BOOM

        @pytest.mark.mem_leak_check
        def test_reraise():
            with pytest.raises(ValueError):
                boom()
        """
    )
    result = run()
    result.assert_outcomes(failed=1)
    text = result.stdout.str()
    assert "Why it is kept" in text
    assert "test_boom.BOOM.__traceback__.tb_frame  (" in text, text
    assert "_report_sections" not in text


@OPCACHE_310
def test_option_checks_every_test_and_marker_opts_out(
    pytester: pytest.Pytester, run: Runner
) -> None:
    pytester.makepyfile(
        test_opt="""
        import pytest

        SINK = []

        def test_leaky():
            SINK.append(object())

        @pytest.mark.no_mem_leak_check
        def test_exempt():
            SINK.append(object())

        def test_clean():
            sum(range(100))
        """
    )
    result = run("-rA", "--mem-leak-check", "--mem-leak-iterations=12", "--mem-leak-warmup=2")
    seen = outcomes(result)
    assert seen == {"test_leaky": "FAILED", "test_exempt": "PASSED", "test_clean": "PASSED"}
    result.stdout.fnmatch_lines(["*grew over 12 judged runs*"])
    plain = run("-rA")
    assert set(outcomes(plain).values()) == {"PASSED"}


def test_ini_twin_of_the_option(pytester: pytest.Pytester, run: Runner) -> None:
    pytester.makeini("[pytest]\nmem_leak_check = true\nmem_leak_iterations = 15\n")
    pytester.makepyfile(
        test_ini="""
        SINK = []

        def test_leaky():
            SINK.append(object())
        """
    )
    result = run()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*grew over 15 judged runs*"])


@pytest.mark.parametrize(
    ("marker", "fragment"),
    [
        ("mem_leak_check(iterations=0)", "iterations"),
        ("mem_leak_check(warmup=-1)", "warmup"),
        ("mem_leak_check(iterations=2.5)", "2.5"),
        ("mem_leak_check(speed=3)", "unknown keyword speed"),
    ],
)
def test_bad_leak_marker_is_an_error_naming_the_test(
    pytester: pytest.Pytester, run: Runner, marker: str, fragment: str
) -> None:
    pytester.makepyfile(
        test_bad=f"""
        import pytest

        @pytest.mark.{marker}
        def test_marked():
            raise AssertionError("the body must not run")
        """
    )
    result = run()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines([f"*test_bad.py::test_marked*{fragment}*"])
    assert "the body must not run" not in result.stdout.str()


def test_fixture_check_leaks(pytester: pytest.Pytester, run: Runner) -> None:
    pytester.makepyfile(
        test_fixture="""
        import time

        import pytest

        def test_clean_returns_the_result(memguard):
            assert memguard.check_leaks(sorted, [3, 1, 2]) == [1, 2, 3]

        def test_leak_raises(memguard):
            sink = []
            with pytest.raises(AssertionError, match="leaks: blocks"):
                memguard.check_leaks(lambda: sink.append(object()), iterations=12, warmup=2)

        def test_bad_arguments(memguard):
            with pytest.raises(ValueError, match="iterations"):
                memguard.check_leaks(sorted, [], iterations=0)

        def test_too_slow_for_the_budget_runs_in_full(memguard):
            calls = [0]

            def slow():  # 0.08 s: the budget holds no verdict; asked for, it runs in full
                calls[0] += 1
                end = time.process_time() + 0.08
                while time.process_time() < end:
                    pass

            memguard.check_leaks(slow)
            assert 1 + 32 <= calls[0] <= 1 + 2 * 32
        """
    )
    run().assert_outcomes(passed=4)


def test_threads_alive_during_a_check_are_noted_in_a_leak_and_never_warned(
    pytester: pytest.Pytester, run: Runner
) -> None:
    """A note, not a warning: suites that turn warnings into errors would fail clean tests."""
    pytester.makepyfile(
        test_thread="""
        import threading
        import pytest

        STOP = threading.Event()
        THREAD = threading.Thread(target=STOP.wait, daemon=True)
        THREAD.start()
        SINK = []

        @pytest.mark.mem_leak_check(iterations=10, warmup=1)
        def test_clean():
            sum(range(10))

        @pytest.mark.mem_leak_check(iterations=10, warmup=1)
        def test_leaky():
            SINK.append(object())

        def test_stop():
            STOP.set()
            THREAD.join()
        """
    )
    result = run("-W", "error", "-rA", "-p", "no:randomly")
    assert outcomes(result) == {
        "test_clean": "PASSED",
        "test_leaky": "FAILED",
        "test_stop": "PASSED",
    }
    result.stdout.fnmatch_lines(["Note: 1 other thread(s) were alive; readings are process-wide."])
    assert "warnings summary" not in result.stdout.str()
