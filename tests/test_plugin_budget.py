"""mem_budget end to end: every kind of memory, each on both sides of its limit."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

import pytest

from pytest_memguard.platforms import IS_LINUX

from .conftest import HOOK, MiB, Runner, needs_hook

CORPUS = """
import mmap
import threading

import pytest

MiB = 2**20


def touch(buf):
    for i in range(0, len(buf), 4096):
        buf[i] = 1


@pytest.mark.mem_budget("50MB")
def test_pass_bytearray():
    touch(bytearray(30 * MiB))


@pytest.mark.mem_budget("50MB")
def test_fail_bytearray():
    touch(bytearray(60 * MiB))


@pytest.mark.mem_budget("40MB")
def test_pass_small_objects():
    x = [(i, str(i)) for i in range(100_000)]


@pytest.mark.mem_budget("4MB")
def test_fail_small_objects():
    x = [(i, str(i)) for i in range(100_000)]


@pytest.mark.mem_budget("100MB")
def test_pass_mmap():
    m = mmap.mmap(-1, 60 * MiB)
    touch(m)
    m.close()


@pytest.mark.mem_budget("30MB")
def test_fail_mmap():
    m = mmap.mmap(-1, 60 * MiB)
    touch(m)
    m.close()


def _thread_alloc():
    touch(bytearray(40 * MiB))


@pytest.mark.mem_budget("80MB")
def test_pass_thread():
    t = threading.Thread(target=_thread_alloc)
    t.start()
    t.join()


@pytest.mark.mem_budget("20MB")
def test_fail_thread():
    t = threading.Thread(target=_thread_alloc)
    t.start()
    t.join()


KEEP = []


@pytest.mark.mem_budget(retained="1MB")
def test_pass_retained_dropped():
    x = [bytearray(1000) for _ in range(5000)]


@pytest.mark.mem_budget(retained="1MB")
def test_fail_retained_kept():
    KEEP.append([bytearray(1000) for _ in range(5000)])


@pytest.mark.mem_budget(private="8MB")
def test_pass_private_freed():
    b = bytearray(30 * MiB)
    touch(b)
    del b


@pytest.mark.mem_budget(private="8MB")
def test_fail_private_kept():
    b = bytearray(30 * MiB)
    touch(b)
    KEEP.append(b)


@pytest.mark.mem_budget(private="8MB")
def test_pass_private_shared_closed():
    m = mmap.mmap(-1, 30 * MiB)
    touch(m)
    m.close()


@pytest.mark.mem_budget(private="8MB")
def test_fail_private_shared_kept():
    m = mmap.mmap(-1, 30 * MiB)  # shared anonymous: statm calls it "shared", like file pages
    touch(m)
    KEEP.append(m)


@pytest.mark.mem_budget("50MB")
def test_pass_ten_buffers_in_turn():
    for _ in range(10):
        b = bytearray(10 * MiB)
        touch(b)
        del b


@pytest.mark.mem_budget(peak="30MB", retained="2MB")
class TestClassMarker:
    def test_pass_in_class(self):
        touch(bytearray(10 * MiB))

    def test_fail_in_class(self):
        touch(bytearray(40 * MiB))

    @pytest.mark.mem_budget(retained="100KB")
    def test_fail_retained_overrides_class(self):
        KEEP.append(bytearray(1 * MiB))
"""

ALLOCATIONS = """
import pytest

@pytest.mark.mem_budget(allocations=200_000)
def test_pass_allocations():
    x = [str(i) for i in range(50_000)]

# ~2.5 MB in small blocks: ~5 samples at one per 512 KiB (10,000 made ~0.5 MB, and whether
# the one sample landed in it depended on the interpreter's object sizes).
@pytest.mark.mem_budget(allocations=5_000)
def test_fail_allocations():
    x = [str(i) for i in range(50_000)]
"""

MODULE_AND_DEFAULT = """
import pytest

pytestmark = pytest.mark.mem_budget("20MB")

def test_pass_module_marker():
    bytearray(5 * 2**20)

def test_fail_module_marker():
    b = bytearray(30 * 2**20)
    for i in range(0, len(b), 4096):
        b[i] = 1
"""

DEFAULT_ONLY = """
import pytest

def test_pass_default():
    bytearray(2 * 2**20)

def test_fail_default():
    bytearray(12 * 2**20)

@pytest.mark.mem_budget("50MB")
def test_pass_marker_overrides_default():
    bytearray(12 * 2**20)
"""

NUMPY = """
import pytest
np = pytest.importorskip("numpy")

@pytest.mark.mem_budget("100MB")
def test_pass_numpy():
    a = np.ones(8 * 2**20)  # 64 MiB, allocated by numpy outside the Python allocators

@pytest.mark.mem_budget("32MB")
def test_fail_numpy():
    a = np.ones(8 * 2**20)
"""


def outcomes(result: pytest.RunResult) -> dict[str, str]:
    """Test name -> PASSED/FAILED/ERROR from the -rA short summary (serial and xdist alike)."""
    found: dict[str, str] = {}
    for line in result.stdout.lines:
        match = re.match(r"^(PASSED|FAILED|ERROR|SKIPPED) \S*::(\w+(?:::\w+)?)", line)
        if match:
            found[match.group(2).split("::")[-1]] = match.group(1)
    return found


def assert_sides(result: pytest.RunResult) -> None:
    seen = outcomes(result)
    assert seen, result.stdout.str()
    expected = {name: "PASSED" if "_pass_" in name else "FAILED" for name in seen}
    if not IS_LINUX and "test_fail_private_shared_kept" in expected:
        # psutil's private figure is resident minus shared: shared anonymous memory the test
        # keeps is not in it (on Linux, /proc's RssShmem adds it back).
        expected["test_fail_private_shared_kept"] = "PASSED"
    if not HOOK and "test_pass_small_objects" in expected:
        # tracemalloc's own tables (~160 B per live block) are in the kernel's peak: 200,000
        # small objects peak at 46 MiB instead of 14 MiB (docs/configuration.md).
        expected["test_pass_small_objects"] = "FAILED"
    assert seen == expected, result.stdout.str()


def test_budget_corpus_each_on_its_side(
    pytester: pytest.Pytester, run: Runner, plugin_args: Sequence[str]
) -> None:
    pytester.makepyfile(test_budgets=CORPUS)
    result = run(*plugin_args, "-rA")
    assert_sides(result)
    assert len(outcomes(result)) == 18
    text = result.stdout.str()
    assert re.search(r"peak 6\d\.\d MiB exceeds mem_budget 50\.0 MiB by \d+\.\d MiB", text)
    assert "retained " in text
    assert "exceeds mem_budget 1.0 MiB" in text
    assert "exceeds mem_budget 100.0 KiB" in text


def test_failure_says_where_the_memory_went(pytester: pytest.Pytester, run: Runner) -> None:
    pytester.makepyfile(
        test_where="""
        import pytest

        KEEP = []

        @pytest.mark.mem_budget(retained="1MB")
        def test_leaky():
            KEEP.append([bytearray(1000) for _ in range(5000)])  # line 7
        """
    )
    result = run()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*retained * exceeds mem_budget 1.0 MiB by *",
            "measured: peak *, heap_peak *, retained *",
            "Top allocation sites (still alive at the end; sampled, estimated):",
            # (tracemalloc's frames carry no function names)
            "*test_where.py:7 in *" if HOOK else "*test_where.py:7  <- *",
            "Object types allocated during the test and still alive:",
            "*5,000  bytearray",
        ]
    )


@needs_hook  # elsewhere the budget warns that it cannot be checked (test_plugin_core)
def test_allocations_budget(pytester: pytest.Pytester, run: Runner) -> None:
    pytester.makepyfile(test_allocs=ALLOCATIONS)
    result = run("-rA")
    assert_sides(result)
    result.stdout.fnmatch_lines(
        [
            "*allocations *,??? exceeds mem_budget 5,000 by *",
            "Top allocation sites*",
            "*test_allocs.py:11 in *",
        ]
    )


def test_module_marker_and_ini_default(
    pytester: pytest.Pytester, run: Runner, plugin_args: Sequence[str]
) -> None:
    pytester.makepyfile(test_module=MODULE_AND_DEFAULT, test_default=DEFAULT_ONLY)
    pytester.makeini("[pytest]\nmem_default_budget = 8MB\n")
    result = run(*plugin_args, "-rA")
    assert_sides(result)
    assert len(outcomes(result)) == 5
    result.stdout.fnmatch_lines(["*exceeds mem_default_budget 8.0 MiB*"])


NESTED_AND_ADDED = """
import pytest

def grab():
    b = bytearray(12 * 2**20)
    for i in range(0, len(b), 4096):
        b[i] = 1

@pytest.mark.mem_budget("8MB")
class TestOuter:
    def test_fail_outer(self):
        grab()

    class TestInner:
        def test_fail_inner_inherits(self):
            grab()

        @pytest.mark.mem_budget("50MB")
        def test_pass_inner_own_marker(self):
            grab()

class TestUnmarked:
    def test_pass_unmarked(self):
        grab()

def test_fail_heavy_marked_by_conftest():
    grab()
"""

ADDS_MARKER = """
import pytest

def pytest_collection_modifyitems(items):
    for item in items:
        if "heavy" in item.name:
            item.add_marker(pytest.mark.mem_budget("8MB"))
"""


def test_markers_of_nested_classes_and_added_at_collection(
    pytester: pytest.Pytester, run: Runner
) -> None:
    """Markers reach a test from every parent (checked once per parent) and from a conftest
    that adds them to items during collection, as a plain ``iter_markers`` would see them."""
    pytester.makepyfile(test_nested=NESTED_AND_ADDED)
    pytester.makeconftest(ADDS_MARKER)
    result = run("-rA")
    assert_sides(result)
    assert len(outcomes(result)) == 5


def test_numpy_memory_is_seen(pytester: pytest.Pytester, run: Runner) -> None:
    pytest.importorskip("numpy")
    pytester.makepyfile(test_np=NUMPY)
    assert_sides(run("-rA"))


@pytest.mark.parametrize(
    ("marker", "fragment"),
    [
        ('mem_budget("fifty")', "'fifty'"),
        ('mem_budget("50XB")', "'50XB'"),
        ("mem_budget(-5)", "-5"),
        ('mem_budget(peek="1MB")', "unknown keyword peek"),
        ('mem_budget(allocations="lots")', "'lots'"),
        ("mem_budget()", "no limit given"),
        # Edge cases: each a one-line error naming the test, not a bare exception.
        ("mem_budget(allocations='²')", "'²': expected a whole number"),
        ("mem_leak_check(10**12)", "expected a whole number from 1 to 100,000"),
        ("mem_budget('1MB', tolerance='1' * 400 + '%')", "expected a spec such as"),
        ("mem_isolate(True)", "takes no arguments, got True"),
        ("no_mem_leak_check(reason='x')", "takes no arguments, got reason"),
    ],
)
def test_bad_marker_is_an_error_naming_test_and_value(
    pytester: pytest.Pytester, run: Runner, marker: str, fragment: str
) -> None:
    pytester.makepyfile(
        test_bad=f"""
        import pytest

        RAN = []

        @pytest.mark.{marker}
        def test_marked():
            RAN.append(1)
            raise AssertionError("the body must not run")
        """
    )
    result = run()
    result.assert_outcomes(errors=1)
    assert result.ret != 0
    result.stdout.fnmatch_lines([f"*test_bad.py::test_marked*{fragment}*"])
    assert "the body must not run" not in result.stdout.str()
    assert "Traceback" not in result.stdout.str()


NATIVE_AFTER_OTHERS = """
import ctypes

import pytest

libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]


def test_a_fails_after_freeing_much():
    # Freeing an 8 MiB mapping raises malloc's mmap threshold above it; the 64 KiB blocks
    # then come from the heap, and stay resident once freed (below the trim threshold).
    big = libc.malloc(8 * 2**20)
    ctypes.memset(big, 1, 8 * 2**20)
    libc.free(big)
    blocks = [libc.malloc(64 * 1024) for _ in range(96)]
    for block in blocks:
        ctypes.memset(block, 1, 64 * 1024)
    for block in reversed(blocks):
        libc.free(block)
    assert False


@pytest.mark.mem_budget("1.25MB")
def test_b_native_spike():
    pointer = libc.malloc(2 * 2**20)
    ctypes.memset(pointer, 1, 2 * 2**20)
    libc.free(pointer)
"""


@pytest.mark.skipif(not IS_LINUX, reason="glibc malloc and clear_refs")
@pytest.mark.parametrize("selection", [(), ("-k", "spike")], ids=["after-others", "alone"])
def test_native_spike_is_seen_whatever_ran_before(
    pytester: pytest.Pytester, run: Runner, selection: tuple[str, ...]
) -> None:
    """Memory an earlier test freed stays resident in malloc's heap: a native spike reusing it
    moved no kernel counter and passed a budget it fails alone. Trimming malloc before a
    window with a peak budget makes the spike fault its pages in again."""
    pytester.makepyfile(test_native=NATIVE_AFTER_OTHERS)
    result = run("-rA", "--mem-report=r.json", *selection)
    assert outcomes(result).get("test_b_native_spike") == "FAILED"
    tests = json.loads(pytester.path.joinpath("r.json").read_text())["tests"]
    peak = next(t for t in tests if "spike" in t["nodeid"])["metrics"]["peak"]
    # The kernel's resident-page counters are per CPU and folded in batches: they lag by a
    # few dozen pages a CPU (seen here: 1.7 to 2.0 MiB read for 2 MiB).
    assert 1.4 * MiB <= peak <= 2.4 * MiB


def test_mem_budget_none_lifts_the_default_budget(pytester: pytest.Pytester, run: Runner) -> None:
    pytester.makeini("[pytest]\nmem_default_budget = retained=100KB\n")
    pytester.makepyfile(
        test_lift="""
        import pytest

        KEEP = []

        def test_fail_default():
            KEEP.append(bytearray(2**20))

        @pytest.mark.mem_budget(None)
        def test_pass_lifted():
            KEEP.append(bytearray(2**20))

        @pytest.mark.mem_budget(retained="10KB")
        class TestOuter:
            @pytest.mark.mem_budget(None)
            def test_pass_lifted_inside(self):
                KEEP.append(bytearray(2**20))

            def test_fail_outer(self):
                KEEP.append(bytearray(2**20))
        """
    )
    assert_sides(run("-rA"))
