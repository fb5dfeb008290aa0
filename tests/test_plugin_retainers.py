"""Reference chains through the plugin: leak checks, retained budgets, soaks, survivors."""

from __future__ import annotations

import json

import pytest

from .conftest import Runner, needs_hook, traces_instances

APP = """
import functools

_LOG = []


class Record:
    def __init__(self, n):
        self.n = n


class Service:
    @functools.lru_cache(maxsize=None)
    def lookup(self, key):
        return key


class Session:
    def close(self):
        pass
"""


def test_a_failed_leak_check_says_who_holds_the_growth(
    pytester: pytest.Pytester, run: Runner
) -> None:
    pytester.makepyfile(
        app=APP,
        test_leaks="""
        import pytest

        import app


        @pytest.mark.mem_leak_check
        def test_appends_to_a_module_list():
            app._LOG.append(app.Record(1))


        @pytest.mark.mem_leak_check
        def test_caches_self_on_a_method():
            app.Service().lookup(1)


        @pytest.mark.mem_leak_check
        def test_clean():
            app.Record(2)
        """,
    )
    result = run()
    result.assert_outcomes(passed=1, failed=2)
    result.stdout.fnmatch_lines(
        [
            "*test_appends_to_a_module_list*",
            "Why it is kept (shortest reference paths from a root):",
            "  app._LOG[…]  (list, +1.0 entry per run)",
            "*test_caches_self_on_a_method*",
            "Why it is kept (shortest reference paths from a root):",
            "  app.Service.lookup → its lru_cache[…]  (dict, +1.0 entry per run)",
        ]
    )
    assert "search cut short" not in result.stdout.str()


def test_a_leak_that_nests_a_new_holder_each_run_names_its_type_and_root(
    pytester: pytest.Pytester, run: Runner
) -> None:
    """pyparsing 3.3.3's context manager restores a setting with the dict it saved the setting
    in, so each save nests one more dict: no container grows in place, and the dicts of the
    rest of the heap come and go (10 runs read as 8 more dicts)."""
    pytester.makepyfile(
        test_nest="""
        import pytest


        class Compat:
            collect = False


        @pytest.mark.mem_leak_check
        def test_saves_and_restores_the_wrong_value():
            saved = {"collect": Compat.collect}
            Compat.collect = saved
        """,
    )
    result = run()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "Object types that grew (per run):",
            "      +1 * dict",
            "Why it is kept (shortest reference paths from a root):",
            "  test_nest.Compat.collect  (* dict)",
        ]
    )


def test_wrappers_stacked_one_a_run_are_written_once_with_their_count(
    pytester: pytest.Pytester, run: Runner
) -> None:
    """wrapt 2.5.2's monkey-patching tests wrap a module's function and never unwrap it, so
    each run of the check stacks one more wrapper: the path through them is one repeated link,
    written once with its count rather than once per wrapper."""
    pytester.makepyfile(
        test_wrap="""
        import pytest


        class Wrapper:
            __slots__ = ("wrapped", "calls")

            def __init__(self, wrapped):
                self.wrapped = wrapped
                self.calls = []

            def __call__(self, value):
                self.calls.append(value)
                return self.wrapped(value)


        def handler(value):
            return value


        @pytest.mark.mem_leak_check
        def test_wraps_and_never_unwraps():
            global handler
            handler = Wrapper(handler)
            assert handler(1) == 1
        """,
    )
    result = run()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "Why it is kept (shortest reference paths from a root):",
            "  test_wrap.handler(.wrapped ×*",
        ]
    )
    assert ".wrapped.wrapped.wrapped" not in result.stdout.str()


@traces_instances
def test_a_retained_budget_and_a_soak_say_who_holds_what_they_kept(
    pytester: pytest.Pytester, run: Runner
) -> None:
    pytester.makepyfile(
        app=APP,
        test_kept="""
        import pytest

        import app


        @pytest.mark.mem_budget(retained="10KB")
        def test_keeps_records():
            for n in range(500):
                app._LOG.append(app.Record(n))


        def test_soak_keeps_records(memguard):
            for n in memguard.soak(20_000):
                app._LOG.append(app.Record(n))
        """,
    )
    result = run("-p", "no:randomly")
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(
        [
            "*retained * exceeds mem_budget 10.0 KiB*",
            "Why it is kept (shortest reference paths from a root):",
            "  app._LOG[…]  (12 of 12 app.Record)",
            "*memory kept growing through a soak*",
            "*Why it is kept (shortest reference paths from a root):",
            "*  app._LOG[[]…]  (12 of 12 app.Record)",  # [[] is fnmatch for ["
        ]
    )


def test_no_survivors_fails_a_test_that_leaves_an_object_behind(
    pytester: pytest.Pytester, run: Runner
) -> None:
    pytester.makepyfile(
        app=APP,
        test_sessions="""
        import pytest

        import app

        OPEN = []


        @pytest.fixture
        def session():
            s = app.Session()
            yield s
            s.close()


        @pytest.mark.mem_budget(no_survivors=app.Session)
        def test_fixture_value_is_pytests_until_the_end(session):
            pass


        @pytest.mark.mem_budget(no_survivors="app.Session")
        def test_closes_what_it_opens():
            app.Session().close()


        @pytest.mark.mem_budget(no_survivors=[app.Session, "app.Record"])
        def test_leaves_a_session_open():
            OPEN.append(app.Session())


        @pytest.mark.mem_budget(no_survivors=5)
        def test_bad_value():
            pass
        """,
    )
    result = run("-p", "no:randomly")
    result.assert_outcomes(passed=3, errors=2)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_leaves_a_session_open*",
            "1 object of app.Session, app.Record made here is still alive after it "
            "(mem_budget no_survivors):",
            "       1  app.Session",
            "Why it is kept (shortest reference paths from a root):",
            "  test_sessions.OPEN[0]  (app.Session)",
            "*ERROR at setup of test_bad_value*",
            "invalid mem_budget no_survivors on test_sessions.py::test_bad_value 5: expected a "
            "class, a 'module.Class' name, or a list of them",
        ]
    )


@needs_hook  # tracemalloc cannot pause: the watch's heap walk is in the fallback's figures
def test_the_survivors_fixture_is_left_out_of_the_tests_figures(
    pytester: pytest.Pytester, run: Runner
) -> None:
    pytester.makepyfile(
        app=APP,
        test_api="""
        import pytest_memguard

        import app

        KEPT = []


        def test_fixture(memguard):
            with memguard.survivors(app.Session) as found:
                KEPT.append(app.Session())
                app.Session()
            assert len(found) == 1
            assert "test_api.KEPT[0]" in found.explain()


        def test_api():
            with pytest_memguard.survivors("app.Record") as found:
                app.Record(1)
            assert not found
            found.check()
        """,
    )
    result = run("--mem-report=r.json")
    result.assert_outcomes(passed=2)
    tests = json.loads((pytester.path / "r.json").read_text())["tests"]
    allocations = {t["nodeid"].rpartition("::")[2]: t["metrics"]["allocations"] for t in tests}
    # Each watch walks the whole heap twice (hundreds of thousands of objects): counted, it
    # would dwarf the calls of the test itself (2,050 on the portable path, which reads
    # psutil in the window).
    assert 0 < allocations["test_fixture"] < 5_000
    assert 0 < allocations["test_api"] < 5_000
