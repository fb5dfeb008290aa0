"""Process memory: what the operating system says this process holds.

Two very different costs live here. ``usage()`` is the full picture (virtual, physical, private,
proportional, swapped, peak) and on Linux reads ``/proc/self/smaps_rollup``, whose cost grows
with the resident set (about 10 µs per MB): fine for a report, wrong for every test. The
``ProcessProbe`` is the per-test bracket and must cost the same on a 10 MB and a 10 GB process:
a kept-open ``/proc/self/statm`` read with ``os.pread`` and a write of ``5`` to a kept-open
``/proc/self/clear_refs`` that resets the kernel's high-water mark. Where the extension is built
on Linux the same bracket runs inside its whole-window calls (``measurement.Engine.native``);
this probe is the one for other platforms, and the reference the C version is tested against.
"""

from __future__ import annotations

import array
import contextlib
import functools
import gc
import os
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from .platforms import IS_LINUX
from .units import format_size

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
# ru_maxrss is KiB on Linux and the BSDs, bytes on macOS.
_MAXRSS_UNIT = 1 if sys.platform == "darwin" else 1024
_resource: ModuleType | None
try:
    import resource as _resource
except ImportError:  # Windows: the peak working set comes from psutil instead
    _resource = None


def max_resident() -> int:
    """The process's highest resident set so far, in bytes: ``ru_maxrss`` where POSIX has it,
    the peak working set on Windows."""
    if _resource is not None:
        return int(_resource.getrusage(_resource.RUSAGE_SELF).ru_maxrss) * _MAXRSS_UNIT
    import psutil

    return int(getattr(psutil.Process().memory_info(), "peak_wset", 0))


@dataclass(frozen=True)
class MemoryUsage:
    """A reading of the whole process; ``None`` where the platform cannot say.

    ``private`` is USS (pages no other process maps); ``proportional`` is PSS (shared pages
    divided among their sharers). Both move when a sibling process starts or exits, which is
    why gates use anonymous memory and Python-heap figures instead.
    """

    virtual: int | None
    physical: int | None
    private: int | None
    proportional: int | None
    swapped: int | None
    peak: int | None

    def pretty(self) -> str:
        rows = (
            ("virtual", self.virtual, "address space reserved, mostly never touched"),
            ("physical", self.physical, "resident (RSS), includes shared libraries"),
            ("private", self.private, "owned by this process alone (USS)"),
            ("proportional", self.proportional, "PSS: shared pages split among sharers"),
            ("swapped", self.swapped, "paged out to swap"),
            ("peak", self.peak, "highest physical since start or last reset"),
        )
        return "\n".join(
            f"{name:<13}{format_size(value):>12}  {meaning}" for name, value, meaning in rows
        )


def kib_fields(path: str, wanted: tuple[str, ...]) -> dict[str, int]:
    found: dict[str, int] = {}
    with open(path, "rb") as handle:
        for line in handle:
            key, _, rest = line.partition(b":")
            name = key.decode()
            if name in wanted:
                found[name] = int(rest.split()[0]) * 1024
    return found


def usage() -> MemoryUsage:
    """Read every figure for this process (costs O(resident set) on Linux; not for hot paths)."""
    if IS_LINUX and os.path.exists("/proc/self/smaps_rollup"):
        return proc_usage("/proc/self")
    return psutil_usage()


def proc_usage(directory: str) -> MemoryUsage:
    """Every figure of the process whose ``/proc`` directory this is. Without permission to
    read its ``smaps_rollup`` (another user's process), private and proportional are None."""
    status = kib_fields(f"{directory}/status", ("VmSize", "VmRSS", "VmHWM", "VmSwap"))
    try:
        rollup = kib_fields(
            f"{directory}/smaps_rollup", ("Private_Clean", "Private_Dirty", "Pss", "Swap")
        )
    except PermissionError:
        rollup = {}
    private = (
        rollup["Private_Clean"] + rollup["Private_Dirty"]
        if "Private_Clean" in rollup and "Private_Dirty" in rollup
        else None
    )
    return MemoryUsage(
        virtual=status.get("VmSize"),
        physical=status.get("VmRSS"),
        private=private,
        proportional=rollup.get("Pss"),
        swapped=rollup.get("Swap", status.get("VmSwap")),
        peak=status.get("VmHWM"),
    )


def psutil_usage(pid: int | None = None) -> MemoryUsage:
    """Every figure psutil gives for a process (this one by default)."""
    import psutil

    proc = psutil.Process(pid)
    info = proc.memory_info()
    try:
        full = proc.memory_full_info()
    except (psutil.AccessDenied, OSError):  # pragma: no cover - platform dependent
        full = None
    peak = getattr(info, "peak_wset", None)
    if peak is None and pid is None:
        peak = max_resident()
    return MemoryUsage(
        virtual=getattr(info, "vms", None),
        physical=getattr(info, "rss", None),
        private=getattr(full, "uss", None) if full is not None else None,
        proportional=getattr(full, "pss", None) if full is not None else None,
        swapped=getattr(full, "swap", None) if full is not None else None,
        peak=peak,
    )


def _load_malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``: without it freed memory stays in arenas and looks leaked. Where
    the C library has it (glibc), whichever way the OS is read."""
    if os.name == "nt":
        return None
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):  # musl has no malloc_trim
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


@functools.cache
def _malloc_trim_function() -> Callable[[int], int] | None:
    return _load_malloc_trim()  # ctypes is loaded on first use, not at startup


def release_free_memory() -> None:
    """Collect garbage and hand free allocator memory back to the OS before a reading."""
    gc.collect()
    trim_malloc()


def trim_malloc() -> None:
    """Hand free malloc memory back to the OS (glibc; nothing elsewhere)."""
    trim = _malloc_trim_function()
    if trim is not None:
        trim(0)


@functools.cache
def _native() -> Any:
    """The extension's kernel calls (Linux), or None: the bracket's system calls cost ~10 us a
    test less from C than through Python objects."""
    if not IS_LINUX:
        return None
    try:
        import pytest_memguard._allochook as ext
    except ImportError:
        return None
    return ext if hasattr(ext, "kernel") and hasattr(ext, "count_fds") else None


def _resident_sampler() -> Any:
    """The extension, where it has C threads to sample this process's resident size (Linux,
    macOS), or None."""
    try:
        import pytest_memguard._allochook as ext
    except ImportError:
        return None
    return ext if hasattr(ext, "sampler_new") else None


# Held by the peak sampler while it reads and by the descriptor count while it counts: where
# reading the resident set opens a file (psutil on Linux) or a handle (Windows), a count taken
# while the sampler's thread had it open read one more, and a clean test's fds "grew".
_READING = threading.Lock()


def open_fds(native: bool = True) -> int | None:
    """Open file descriptors (handles on Windows): a leaked fd is invisible to memory metrics.
    Only differences mean anything (the C count leaves out the directory it keeps open)."""
    ext = _native() if native else None
    if ext is not None:
        try:
            return int(ext.count_fds())
        except OSError:  # pragma: no cover
            return None
    if IS_LINUX:
        try:
            return len(os.listdir("/proc/self/fd")) - 1  # minus listdir's own fd
        except OSError:  # pragma: no cover
            return None
    try:
        import psutil

        proc = psutil.Process()
        with _READING:
            if hasattr(proc, "num_fds"):
                return proc.num_fds()
            handles: int = proc.num_handles()  # type: ignore[attr-defined,unused-ignore]
            return handles  # pragma: no cover - Windows
    except Exception:  # pragma: no cover
        return None


@dataclass
class _Window:
    start_resident: int
    start_anon: int
    high: int
    # ru_maxrss also folds in signal->maxrss, which the kernel raises when a thread exits and
    # clear_refs never resets: once it stands above this window's start, only VmHWM is honest.
    precise: bool = False


class ProcessProbe:
    """The O(1) per-test bracket: resident/anonymous memory and the kernel's peak.

    Windows nest (the plugin's per-test window around a user's ``measure()``): resetting the
    kernel peak for an inner window must not lose what the outer one had already seen, so every
    open window keeps its own running maximum, folded in before each reset.
    """

    def __init__(self, native: bool = True) -> None:
        self._native_calls = native  # the extension's calls where it has them (tests turn off)
        self._windows: list[_Window] = []
        self._lock = threading.Lock()
        self._kernel: Callable[[int, int], tuple[int, int, int]] | None = (
            getattr(_native(), "kernel", None) if native else None
        )
        self._open()

    def _open(self) -> None:
        self._statm: int | None = None
        self._status: int | None = None
        self._clear_refs: int | None = None
        self._sampler: PeakSampler | None = None
        if IS_LINUX:
            flags = os.O_RDONLY | os.O_CLOEXEC
            try:
                self._statm = os.open("/proc/self/statm", flags)
                self._status = os.open("/proc/self/status", flags)
            except OSError:  # pragma: no cover
                self._statm = self._status = None
            try:
                self._clear_refs = os.open("/proc/self/clear_refs", os.O_WRONLY | os.O_CLOEXEC)
                os.write(self._clear_refs, b"5")
            except OSError:
                self._clear_refs = None
        if self._clear_refs is None:
            ext = _resident_sampler() if self._native_calls else None
            self._sampler = PeakSampler(self.resident, ext)
        self._pid = os.getpid()

    @property
    def exact_peak(self) -> bool:
        """Whether the peak is the kernel's high-water mark (else a 1 ms RSS sampler, which
        misses what a test allocates and frees while it holds the GIL)."""
        return self._clear_refs is not None

    @property
    def peak_method(self) -> str:
        if self._clear_refs is not None:
            return "kernel high-water mark (clear_refs)"
        if self._sampler is not None and self._sampler.native:
            return "RSS sampled every 1 ms (clear_refs unavailable; shorter spikes can be missed)"
        return (
            "RSS sampled every 1 ms by a Python thread (clear_refs unavailable; spikes within "
            "one call into C code can be missed)"
        )

    def sampling_suspended(self) -> contextlib.AbstractContextManager[None]:
        """See ``PeakSampler.suspended`` (nothing to suspend where the peak is the kernel's)."""
        if self._sampler is None:
            return contextlib.nullcontext()
        return self._sampler.suspended()

    def close(self) -> None:
        for fd in (self._statm, self._status, self._clear_refs):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._statm = self._status = self._clear_refs = None
        if self._sampler is not None:
            self._sampler.stop()

    def _reopen_after_fork(self) -> None:
        # A forked child inherits the parent's fds, which still point at the parent's /proc.
        if os.getpid() != self._pid:
            self.close()
            self._windows = []
            self._open()

    def resident_and_anon(self) -> tuple[int, int]:
        """Resident and anonymous bytes (resident minus file-backed and shared pages)."""
        if self._statm is not None:
            fields = os.pread(self._statm, 128, 0).split()
            resident = int(fields[1]) * PAGE_SIZE
            return resident, resident - int(fields[2]) * PAGE_SIZE
        import psutil

        info = psutil.Process().memory_info()
        shared = getattr(info, "shared", 0)
        return info.rss, info.rss - shared

    def resident(self) -> int:
        return self.resident_and_anon()[0]

    def shared_memory(self) -> int:
        """Resident shared memory (RssShmem: shared anonymous mappings, SysV shm, tmpfs), which
        statm counts with file pages as "shared" although the process made it; 0 where
        /proc is not there."""
        return self._status_bytes(b"RssShmem:")

    def _vmhwm(self) -> int:
        return self._status_bytes(b"VmHWM:")

    def _status_bytes(self, field: bytes) -> int:
        """A ``Name:   N kB`` field of /proc/self/status, in bytes; 0 where it is missing."""
        if self._status is None:
            return 0
        data = os.pread(self._status, 4096, 0)
        start = data.find(field)
        if start < 0:
            return 0
        start += len(field)
        return int(data[start : data.index(b"kB", start)]) * 1024

    def _high_water(self, precise: bool) -> int:
        """The kernel's peak RSS since the last reset. The cheap read (1 µs) is ru_maxrss; the
        precise one (~15 µs) parses VmHWM and is only needed when ru_maxrss is stale."""
        if self._clear_refs is not None:
            if precise and self._status is not None:
                return max(self._vmhwm(), self.resident())
            # ru_maxrss is folded in lazily by the kernel; the current RSS may be higher.
            return max(max_resident(), self.resident())
        assert self._sampler is not None
        return max(self._sampler.high(), self.resident())

    def _read(self, reset: bool) -> tuple[int, int, int]:
        """(resident, anonymous, ru_maxrss) in bytes, resetting the peak first if asked."""
        kernel = self._kernel
        if kernel is not None and self._statm is not None and self._clear_refs is not None:
            resident, shared, maxrss = kernel(self._statm, self._clear_refs if reset else -1)
            return resident * PAGE_SIZE, (resident - shared) * PAGE_SIZE, maxrss * _MAXRSS_UNIT
        if reset:
            self._reset_high_water()
        resident, anon = self.resident_and_anon()
        return resident, anon, max_resident()

    def _reset_high_water(self) -> None:
        if self._clear_refs is not None:
            os.write(self._clear_refs, b"5")
        elif self._sampler is not None:
            self._sampler.reset()

    def begin(self) -> _Window:
        self._reopen_after_fork()
        with self._lock:
            if self._windows:
                high = self._high_water(any(w.precise for w in self._windows))
                for window in self._windows:
                    window.high = max(window.high, high)
            if self._sampler is not None:
                self._sampler.acquire()
            resident, anon, maxrss = self._read(reset=True)
            stale = self._clear_refs is not None and maxrss > resident + (512 << 10)
            window = _Window(resident, anon, resident, precise=stale)
            self._windows.append(window)
            return window

    def end(self, window: _Window) -> tuple[int, int, int, int]:
        """Close ``window``: (peak above start, resident change, anonymous now, anon at start)."""
        with self._lock:
            precise = any(w.precise for w in self._windows) or window.precise
            if precise or self._clear_refs is None:
                high = self._high_water(precise)
                resident, anon = self.resident_and_anon()
            else:
                resident, anon, maxrss = self._read(reset=False)
                # ru_maxrss is folded in lazily by the kernel; the current RSS may be higher.
                high = max(maxrss, resident)
            if window in self._windows:
                self._windows.remove(window)
            for outer in self._windows:
                outer.high = max(outer.high, high)
            if self._sampler is not None:
                self._sampler.release()
            window.high = max(window.high, high)
            return (
                max(0, window.high - window.start_resident),
                resident - window.start_resident,
                anon,
                window.start_anon,
            )


class PeakSampler:
    """Fallback peak where clear_refs cannot be written: the highest of ``read`` (resident
    bytes) taken every millisecond, while a window is open.

    With the extension (``native``), a C thread of its own reads this process's resident size:
    it runs beside the interpreter and sees spikes inside C code. Without it, a Python thread polls
    ``read``; it waits for the GIL, so it misses spikes made inside one stretch of C code (the
    report header says so), and the other-process watchers, which read another process, use
    it too.
    """

    def __init__(self, read: Callable[[], int], native: Any = None) -> None:
        self._read = read
        # Where the extension can read the resident size: its own C sampler (a capsule) and
        # the module whose functions drive it. None elsewhere, and the Python thread reads.
        self._c: Any = native.sampler_new() if native is not None else None
        self._ext: Any = native if self._c is not None else None
        # In a C array: an int object replaced by the sampler's thread would free a block the
        # test's thread made (reset() runs there), a step in a leak check's block count.
        self._high = array.array("q", [0])
        self._users = 0
        self._running = False
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._guard = threading.Lock()

    def _run(self) -> None:
        # Started inside a test's window, this thread would count as one the test started:
        # its readings' allocations are left out where the hook can (not on tracemalloc).
        try:
            import pytest_memguard._allochook as ext

            ext.pause(True)
        except (ImportError, AttributeError):
            pass
        self._ready.set()
        while not self._stop.wait(0.001):
            with _READING:
                value = self._read()
            if value > self._high[0]:
                self._high[0] = value

    @property
    def native(self) -> bool:
        return self._c is not None

    def acquire(self) -> None:
        with self._guard:
            self._users += 1
            self._start()

    def _start(self) -> None:
        if self._running:
            return
        self._running = True
        if self._c is not None:
            self._ext.sampler_start(self._c)
            return
        self._stop.clear()
        self._ready.clear()
        self._thread = threading.Thread(target=self._run, name="memguard-peak-sampler", daemon=True)
        self._thread.start()
        # Until the thread has paused itself, what it allocates would land in the window the
        # caller opens next.
        self._ready.wait()

    @contextlib.contextmanager
    def suspended(self) -> Iterator[None]:
        """No readings for a while. A leak check's repetitions are no window's peak, and the
        thread's reads would be in glibc's figure, which the check judges (with the portable
        path forced on Linux, a leak of a block every fourth run went unjudged)."""
        with self._guard:
            self.stop()
        try:
            yield
        finally:
            with self._guard:
                if self._users > 0:
                    self._start()

    def release(self) -> None:
        with self._guard:
            self._users -= 1
            if self._users <= 0:
                self.stop()

    def stop(self) -> None:
        self._running = False
        if self._c is not None:
            self._ext.sampler_stop(self._c)
            return
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def reset(self) -> None:
        if self._c is not None:
            self._ext.sampler_reset(self._c)
        else:
            self._high[0] = self._read()

    def high(self) -> int:
        if self._c is not None:
            return int(self._ext.sampler_high(self._c))
        return self._high[0]
