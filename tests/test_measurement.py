"""The measurement core, in this process (which the plugin also measures: windows nest)."""

from __future__ import annotations

import mmap
import os
import subprocess
import sys
import sysconfig
import textwrap
import threading
import warnings
from pathlib import Path

import pytest

import pytest_memguard as pm
from pytest_memguard import firstuse, measurement
from pytest_memguard.heap import ExtBackend
from pytest_memguard.measurement import Engine, get_engine, interpreter_scope
from pytest_memguard.platforms import IS_LINUX
from pytest_memguard.process import (
    PeakSampler,
    ProcessProbe,
    _resident_sampler,
    open_fds,
    release_free_memory,
    trim_malloc,
)

from .conftest import needs_kernel_peak

MiB = 2**20


@pytest.fixture(params=["native", "composed"])
def engine_kind(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test on both ways to make a window: the extension's whole-window calls and the
    Python probe composed with the heap backend (what other platforms get)."""
    kind: str = request.param
    if kind == "native" and get_engine().native is None:
        pytest.skip("no native windows here")
    if kind == "composed":
        composed = Engine(native=False)
        monkeypatch.setattr(measurement, "get_engine", lambda: composed)
    return kind


def touch(buffer: bytearray | mmap.mmap) -> None:
    for offset in range(0, len(buffer), 4096):
        buffer[offset] = 1


def test_package_api_is_imported_on_first_use() -> None:
    """Every pytest run imports the package (the plugin lives in it): the API's modules load
    when a name is first used, and each name is what it always was."""
    code = textwrap.dedent(
        """
        import sys
        import pytest_memguard as pm
        print(sorted(m for m in sys.modules if m.startswith("pytest_memguard")))
        import pytest_memguard.process
        assert pm.usage is pytest_memguard.process.usage and callable(pm.usage)
        assert pm.MemoryUsage is pytest_memguard.process.MemoryUsage
        for name in pm.__all__:
            assert name in dir(pm), name
            getattr(pm, name)
        assert pm.parse_size("1KiB") == 1024
        try:
            pm.nothing_of_that_name
        except AttributeError as exc:
            print("ERR", exc)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.splitlines()[0] == "['pytest_memguard']"
    assert "ERR module 'pytest_memguard' has no attribute 'nothing_of_that_name'" in out
    assert pm.__version__.count(".") == 2


def test_usage_invariants_and_pretty() -> None:
    u = pm.usage()
    assert u.virtual is not None
    assert u.physical is not None
    assert u.private is not None
    assert u.virtual >= u.physical >= u.private > 0
    assert u.peak is not None
    assert u.peak >= u.physical * 0.5
    text = u.pretty()
    for name in ("virtual", "physical", "private", "proportional", "swapped", "peak"):
        assert name in text
    assert "MiB" in text


@needs_kernel_peak  # a sampled peak misses a spike made inside one stretch of Python
@pytest.mark.usefixtures("engine_kind")
def test_peak_of_a_touched_30_mib_bytearray() -> None:
    # A 30 MiB block freed by an earlier test raises glibc's mmap threshold; the next one then
    # comes from the heap, whose freed pages are still resident, and the kernel rightly sees
    # no new memory (the peak is the heap's then). Hand cached memory back first.
    release_free_memory()
    with pm.measure() as m:
        buffer = bytearray(30 * MiB)
        touch(buffer)
        del buffer
    assert m.peak is not None
    assert 0.95 * 30 * MiB <= m.peak <= 1.3 * 30 * MiB
    assert m.kernel_peak is not None
    assert m.kernel_peak >= 0.9 * 30 * MiB


@pytest.mark.usefixtures("engine_kind")
def test_ten_buffers_in_turn_peak_at_one_not_ten() -> None:
    with pm.measure() as m:
        for _ in range(10):
            buffer = bytearray(10 * MiB)
            touch(buffer)
            del buffer
    assert m.peak is not None
    assert 0.95 * 10 * MiB <= m.peak <= 1.3 * 10 * MiB


@pytest.mark.skipif(not IS_LINUX, reason="anonymous mmap accounting is checked on Linux")
@pytest.mark.usefixtures("engine_kind")
def test_anonymous_mmap_is_seen_although_no_allocator_sees_it() -> None:
    with pm.measure() as m:
        region = mmap.mmap(-1, 60 * MiB)
        touch(region)
        region.close()
    assert m.kernel_peak is not None
    assert m.kernel_peak >= 0.95 * 60 * MiB
    assert m.peak is not None
    assert m.peak >= 0.95 * 60 * MiB
    assert (m.heap_peak or 0) < MiB  # the hooks never saw it: only the kernel did


@pytest.mark.usefixtures("engine_kind")
def test_allocation_in_another_thread_is_seen() -> None:
    def work() -> None:
        buffer = bytearray(40 * MiB)
        touch(buffer)

    with pm.measure() as m:
        thread = threading.Thread(target=work)
        thread.start()
        thread.join()
    assert m.peak is not None
    assert m.peak >= 0.95 * 40 * MiB


@pytest.mark.parametrize("backend", ["engine", "fallback"])
@pytest.mark.usefixtures("engine_kind")
def test_a_window_that_runs_threads_or_processes_is_concurrent(
    backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if backend == "fallback":
        from pytest_memguard.fallback import TracemallocBackend

        fallback = Engine(heap=TracemallocBackend(), native=False)
        monkeypatch.setattr(measurement, "get_engine", lambda: fallback)

    def work() -> None:
        assert len([str(i) for i in range(1000)]) == 1000

    with pm.measure() as alone:
        work()
    with pm.measure() as threaded:
        thread = threading.Thread(target=work)
        thread.start()
        thread.join()
    with pm.measure() as spawned:
        subprocess.run([sys.executable, "-c", "pass"], check=True)
    # The fallback sees threads by their audit event, which CPython raises from 3.12.
    hook = backend == "engine" and isinstance(measurement.get_engine().heap, ExtBackend)
    sees_threads = hook or sys.version_info >= (3, 12)
    assert (alone.concurrent, threaded.concurrent, spawned.concurrent) == (
        False,
        sees_threads,
        True,
    )


@pytest.mark.usefixtures("engine_kind")
def test_retained_counts_what_stays_and_not_what_goes() -> None:
    kept: list[bytearray] = []
    with pm.measure() as dropped:
        bytearray(8 * MiB)
    with pm.measure() as retained:
        kept.append(bytearray(8 * MiB))
    assert dropped.retained is not None
    assert dropped.retained < MiB
    # Nested in the plugin's own window, retained is the net change of live heap bytes.
    assert retained.retained is not None
    assert retained.retained >= 0.99 * 8 * MiB


@pytest.mark.usefixtures("engine_kind")
def test_retained_is_only_read_when_asked_for() -> None:
    """A window that does not collect garbage at its end cannot say what was retained: both
    ways of making a window leave it out rather than report the live bytes before a gc."""
    kept: list[bytearray] = []
    with pm.measure(retained=False) as without:
        kept.append(bytearray(MiB))
    with pm.measure(retained=True) as with_it:
        kept.append(bytearray(MiB))
    assert without.retained is None
    assert without.retained_blocks is None
    assert without.heap_peak is not None
    assert without.heap_peak >= MiB
    assert with_it.retained is not None
    assert with_it.retained >= 0.99 * MiB
    # A net count (may be below zero) where the hook counts blocks; tracemalloc does not.
    counts_blocks = isinstance(measurement.get_engine().heap, ExtBackend)
    assert (with_it.retained_blocks is not None) == counts_blocks


@pytest.mark.usefixtures("engine_kind")
def test_private_is_measured_after_gc_and_trim() -> None:
    kept: list[bytearray] = []
    with pm.measure(private=True) as m:
        buffer = bytearray(20 * MiB)
        touch(buffer)
        kept.append(buffer)
    assert m.private is not None
    assert m.private >= 0.95 * 20 * MiB
    with pm.measure(private=True) as freed:
        buffer = bytearray(20 * MiB)
        touch(buffer)
        del buffer
    assert freed.private is not None
    assert freed.private < 2 * MiB


@pytest.mark.skipif(not IS_LINUX, reason="RssShmem is read from /proc")
@pytest.mark.usefixtures("engine_kind")
def test_private_counts_shared_anonymous_memory_the_test_keeps() -> None:
    """``mmap.mmap(-1, n)`` is a shared anonymous mapping: statm counts it as "shared", like
    file pages, but the test made it and holds it."""
    with pm.measure(private=True) as kept:
        region = mmap.mmap(-1, 30 * MiB)
        touch(region)
    assert kept.private is not None
    assert 0.95 * 30 * MiB <= kept.private <= 32 * MiB
    with pm.measure(private=True) as closed:
        other = mmap.mmap(-1, 30 * MiB)
        touch(other)
        other.close()
    assert closed.private is not None
    assert abs(closed.private) < 2 * MiB
    region.close()


@pytest.mark.usefixtures("engine_kind")
def test_nested_windows_each_keep_their_own_peak() -> None:
    with pm.measure() as outer:
        big = bytearray(24 * MiB)
        touch(big)
        del big
        with pm.measure() as inner:
            small = bytearray(4 * MiB)
            touch(small)
            del small
    assert inner.peak is not None
    assert outer.peak is not None
    assert inner.peak < 8 * MiB
    assert outer.peak >= 0.95 * 24 * MiB


def test_a_window_that_compiles_a_pattern_re_had_not_cached_says_so() -> None:
    """A first use that imports nothing (a lexer compiling its rules) is seen; using the
    pattern again, or compiling nothing, is not."""
    import re

    pattern = f"memguard-{os.getpid()}-[a-z]+"
    with pm.measure() as first:
        re.compile(pattern)
    with pm.measure() as again:
        re.compile(pattern)
    with pm.measure() as nothing:
        pass
    assert (first.compiled, again.compiled, nothing.compiled) == (True, False, False)
    assert first.imports == again.imports == 0


def test_a_window_that_reads_a_file_first_says_so(tmp_path: Path) -> None:
    """A first read of a file older than the watch is a first use; reading it again, reading
    a file written since, and writing are not. The watch's own bookkeeping is left out of
    the figures: the first read retains what the second does, though the window made the
    name it opened (the watch keeps a copy of its own; keeping the window's would add the
    name's 500 bytes). Not to the byte: as an xdist worker's first test, the first read
    sometimes keeps one block of 67 bytes more (2 runs in about 25), interpreter state no
    window controls."""
    engine = measurement.get_engine()
    engine.watch_file_reads()
    with pm.measure():  # the tracemalloc fallback imports its modules in its first window
        pass
    name = os.path.join("d" * 200, f"data-{'x' * 200}.txt")
    data = tmp_path / name
    data.parent.mkdir()
    data.write_text("old")
    os.utime(data, (0, 0))
    written = tmp_path / "written.txt"
    written.write_text("new")
    folder = str(tmp_path)

    def read() -> str:
        with open(os.path.join(folder, name)) as f:
            return f.read()

    with pm.measure() as first:
        read()
    with pm.measure() as again:
        read()
    with pm.measure() as new:
        written.read_text()
    with pm.measure() as writing:
        (tmp_path / "out.txt").write_text("out")
    assert [m.files_read for m in (first, again, new, writing)] == [1, 0, 0, 0]
    if measurement.get_engine().native is not None:
        assert first.retained is not None
        assert again.retained is not None
        assert -128 < first.retained - again.retained < 128


def test_a_window_reads_the_interpreters_modules_not_a_rebound_sys_modules(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A test that rebinds ``sys.modules`` imported nothing and compiled nothing by that;
    ``real_modules`` puts the interpreter's own back for a block, and the test's after it."""
    import json.decoder  # noqa: F401  (loaded before the window)

    rebound: dict[str, object] = {}
    with pm.measure() as window:
        monkeypatch.setattr(sys, "modules", rebound)
    with firstuse.real_modules():
        assert sys.modules is firstuse.MODULES
        assert "json.decoder" in sys.modules
    assert sys.modules is rebound
    monkeypatch.undo()
    assert (window.imports, window.compiled) == (0, False)
    monkeypatch.setattr(sys, "modules", rebound)
    with pm.measure() as importing:
        with firstuse.real_modules():
            sys.modules.pop("colorsys", None)
            import colorsys  # noqa: F401
        monkeypatch.undo()
    assert importing.imports == 1


def _sites_of(*wanted: bool) -> list[tuple[int, int]]:
    """(allocations, sites found) of each of nested windows, outermost first, that want sites
    or not, around the same allocation-heavy work (about 10 MiB, 20 samples' worth)."""
    engine = measurement.get_engine()
    meters = [measurement.Meter(engine, sites=w) for w in wanted]
    for meter in meters:
        meter.start()
    kept = [str(i) * 50 for i in range(50_000)]
    found = []
    for meter in reversed(meters):
        result = meter.stop()
        meter.explain(types=False)
        found.append((result.allocations or 0, len(result.sites)))
        meter.close()
    del kept
    return found[::-1]


@pytest.mark.skipif(
    not isinstance(measurement.get_engine().heap, ExtBackend), reason="the hook samples sites"
)
def test_a_window_that_will_not_be_explained_samples_nothing() -> None:
    """Sampling is for a window's sites; one that reads none (a baseline's) skips it, and
    counts the same calls to within a few (one in an xdist worker). An inner window that wants
    sites gets them inside an outer one that does not."""
    ((sampled_calls, sampled_sites),) = _sites_of(True)
    ((plain_calls, plain_sites),) = _sites_of(False)
    assert sampled_sites >= 1
    assert plain_sites == 0
    assert 150_000 <= plain_calls <= 250_000  # an int, a str and its repetition each
    assert abs(sampled_calls - plain_calls) <= 3
    (_, outer_sites), (_, inner_sites) = _sites_of(False, True)
    assert inner_sites >= 1
    assert outer_sites >= 1  # sampling stays on until the outermost window closes


@pytest.mark.usefixtures("engine_kind")
def test_fd_change_is_counted() -> None:
    with pm.measure() as m:
        handle = open(os.devnull)  # noqa: SIM115 - kept open on purpose
    handle.close()
    assert m.fds == 1
    assert open_fds() is not None


@pytest.mark.parametrize("count", [3, 800], ids=["few", "more-than-one-read"])
@pytest.mark.parametrize("native", [True, False], ids=["c", "python"])
def test_both_fd_counts_see_an_open_and_a_close(native: bool, count: int) -> None:
    import resource

    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] < count + 100:
        pytest.skip("fd limit too low")
    before = open_fds(native)
    handles = [open(os.devnull) for _ in range(count)]  # noqa: SIM115 - closed below
    opened = open_fds(native)
    for handle in handles:
        handle.close()
    assert before is not None
    assert opened is not None
    assert opened - before == count
    assert open_fds(native) == before


@pytest.mark.parametrize("native", [True, False], ids=["c", "python"])
def test_both_kernel_brackets_see_a_touched_buffer(native: bool) -> None:
    """The C bracket and the Python one must read the same kernel figures."""
    probe = ProcessProbe(native=native)
    try:
        window = probe.begin()
        # A fresh mapping: a bytearray might reuse pages the allocator already holds.
        buffer = mmap.mmap(-1, 16 * MiB, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        for i in range(0, len(buffer), 4096):
            buffer[i] = 1
        peak, rss, anon, anon0 = probe.end(window)
        buffer.close()
        assert peak >= 15 * MiB
        assert anon - anon0 >= 15 * MiB
        assert rss >= 15 * MiB
    finally:
        probe.close()


@pytest.mark.skipif(_resident_sampler() is None, reason="the extension's sampler (Linux, macOS)")
def test_the_c_sampler_sees_a_spike_while_the_interpreter_is_busy() -> None:
    """Its thread needs no GIL: spikes made and freed by a test that never lets go of the
    interpreter are seen, which a Python thread polling the same figure cannot do. Each
    sampler is its own: another's reset or stop does not touch it."""
    probe = ProcessProbe()
    sampler = PeakSampler(probe.resident, _resident_sampler())
    other = PeakSampler(probe.resident, _resident_sampler())
    assert sampler.native
    assert other.native
    switch = sys.getswitchinterval()
    try:
        sampler.reset()
        start = sampler.high()
        sampler.acquire()
        other.acquire()
        sys.setswitchinterval(5.0)
        for _ in range(10):
            len(b"\x01" * (64 * MiB))  # made, filled and freed while the GIL is held
        sys.setswitchinterval(switch)
        other.reset()
        other.release()
        assert 48 * MiB <= sampler.high() - start <= 256 * MiB
        assert other.high() - start < 16 * MiB
        sampler.release()
        # Stopped, it reads no more, and starts again for the next window.
        stopped = sampler.high()
        buffer = b"\x01" * (64 * MiB)
        assert sampler.high() == stopped
        sampler.reset()
        assert sampler.high() >= 48 * MiB + start
        del buffer
        sampler.acquire()
        sampler.release()
    finally:
        sys.setswitchinterval(switch)
        sampler.stop()
        other.stop()
        probe.close()


def test_probe_resident_and_anon_are_sane() -> None:
    probe = ProcessProbe()
    try:
        resident, anon = probe.resident_and_anon()
        assert resident > anon > 0
        assert "clear_refs" in probe.peak_method or "sampled" in probe.peak_method
    finally:
        probe.close()


def test_measurement_pretty_and_metrics() -> None:
    with pm.measure() as m:
        x = [1] * 1000
    del x
    assert set(m.metrics()) == {
        "peak",
        "heap_peak",
        "retained",
        "private",
        "rss",
        "allocations",
        "fds",
    }
    assert m.private is None  # not asked for: never a made-up number
    assert "heap_peak" in m.pretty()
    assert "n/a" in m.pretty()


def test_interpreter_scope_names_the_minor_version() -> None:
    build = "t" if sysconfig.get_config_var("Py_GIL_DISABLED") else ""
    assert interpreter_scope() == (
        f"{sys.implementation.name}-{sys.version_info[0]}.{sys.version_info[1]}{build}"
    )


def test_a_free_threaded_build_has_a_scope_of_its_own_and_no_hook(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    version = f"{sys.implementation.name}-{sys.version_info[0]}.{sys.version_info[1]}"
    config_var = sysconfig.get_config_var
    monkeypatch.setattr(
        sysconfig,
        "get_config_var",
        lambda name: 1 if name == "Py_GIL_DISABLED" else config_var(name),
    )
    monkeypatch.delenv(measurement.FORCE_FALLBACK_ENV, raising=False)
    assert interpreter_scope() == f"{version}t"
    backend = measurement.load_backend()
    assert not isinstance(backend, ExtBackend)
    assert getattr(backend, "reason", "") == "free-threaded build: the allocator hook needs the GIL"


def test_engine_describes_what_it_measures() -> None:
    text = get_engine().describe()
    assert "peak = max(" in text
    assert "heap = " in text


def test_peak_is_not_inherited_from_a_parent_that_peaked_high() -> None:
    """exec() folds the parent's high-water mark into the child's signal->maxrss, which
    clear_refs never resets: ru_maxrss then reports the parent's peak in every child window
    that starts below it. The probe must notice and read VmHWM instead."""
    buffer = bytearray(200 * MiB)
    touch(buffer)  # this process's high-water mark is now 200 MiB above where it started
    program = textwrap.dedent(
        """
        import pytest_memguard as pm
        with pm.measure() as m:
            small = bytearray(2 * 2**20)
            for i in range(0, len(small), 4096):
                small[i] = 1
            del small
        print(m.kernel_peak)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, check=True
    )
    del buffer
    assert int(out.stdout) < 8 * MiB


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
@pytest.mark.usefixtures("engine_kind")
def test_a_forked_child_measures_itself_not_its_parent() -> None:
    """Kept-open /proc files describe the process that opened them: a forked child (what
    --mem-isolate makes) must open its own, or it would read the parent's memory."""
    with pm.measure():  # opens the files in this process first
        pass
    read_fd, write_fd = os.pipe()
    with warnings.catch_warnings():
        # 3.12+ warns when a process with threads forks (3.15 also for xdist's worker); the
        # child only measures and exits.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        status = 1
        try:
            # Free heap memory the parent left resident (earlier tests' freed blocks) would be
            # reused without raising the child's RSS (a copy-on-write page replaces a shared
            # one): read 16 of 40 MiB on 3.14/3.15 after test_other_process. A peak budget
            # trims first for the same reason.
            trim_malloc()
            with pm.measure() as m:
                buffer = bytearray(40 * MiB)
                touch(buffer)
            os.write(write_fd, str(m.kernel_peak).encode())
            status = 0
        finally:
            os._exit(status)
    os.close(write_fd)
    reported = os.read(read_fd, 100).decode()
    os.close(read_fd)
    os.waitpid(pid, 0)
    assert int(reported) >= 0.9 * 40 * MiB
