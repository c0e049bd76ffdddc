"""Session-wide fixtures and the leak guard.

The guard takes a snapshot of the host before the first test and after the last one
(:mod:`tests.leakcheck`); anything nsrecipes-like that appeared and is still there --
a netns, link, mount, cgroup, IPC object, process, state or /tmp entry -- fails the run.
Processes count only when they are this session's (it marks itself first) and nsrecipes'
(its ``nsr-*`` names, records, cgroups, or new namespaces): another user's never do.
Rootless runs (uid 65534, tests/asuser.py) are checked when each test's home goes: the
processes that test started (this session's mark and its own HOME in their environment)
and any record left in its runtime directory fail it, and nothing else is ever named.
"""
from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import leakcheck  # noqa: E402

_BEFORE: dict[str, set[str]] = {}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--update-docs", action="store_true", default=False,
                     help="docs tests (-m docs): write what the commands print now over the "
                          "outputs README.md and docs/ show (tests/docscheck.py)")


def pytest_sessionstart(session: pytest.Session) -> None:
    leakcheck.mark_session()
    _BEFORE.update(leakcheck.snapshot())


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if hasattr(session.config, "workerinput"):
        return
    leaked = leakcheck.new_since(_BEFORE, leakcheck.snapshot())
    if leaked:
        lines = ["", "LEAK GUARD: nsrecipes objects left on the host after the tests:"]
        for kind, items in sorted(leaked.items()):
            lines += [f"  {kind}: {item}" for item in sorted(items)]
        print("\n".join(lines), file=sys.stderr)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(params=["shell", "native"])
def backend(request: pytest.FixtureRequest) -> str:
    """Both backends: every test that takes it runs once with each."""
    return request.param


@pytest.fixture
def tag():
    """A per-test scope for topologies (``nsr-TAG-...`` names, ``topo-TAG.json`` records):
    whatever carries it is removed at the end, even if the test fails."""
    from nsutil.names import scope_id
    from recipes import net
    value = scope_id()
    yield value
    for item in net.leftovers():
        if f"-{value}-" in item.name or f"topo-{value}." in item.name:
            item.remove()


@pytest.fixture
def runner(backend: str):
    """A demo Runner on the parametrised backend that undoes everything it made."""
    from nsutil.backend import Runner
    with Runner(backend=backend) as run:
        yield run


def _closed_to_others(path: str) -> str | None:
    """The first directory on ``path`` that users other than its owner cannot enter."""
    import stat
    while True:
        if not os.stat(path).st_mode & stat.S_IXOTH:
            return path
        if path == "/":
            return None
        path = os.path.dirname(path)


def unprivileged_argv(argv: list[str], uid: int = 65534) -> list[str]:
    """Wrap ``argv`` to run as an unprivileged user with no capabilities (setpriv).

    That user must reach the checkout: under a mode-700 directory (a clone in /root) every
    such test would fail on Permission denied, so they skip, naming the directory."""
    closed = _closed_to_others(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if closed:
        pytest.skip(f"uid {uid} cannot enter {closed} (mode 700?): clone the project where "
                    "other users can read it to run the unprivileged tests")
    return ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
            "--inh-caps=-all", "--bounding-set=-all", "--"] + argv
