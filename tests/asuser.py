"""Run the real CLI as a real unprivileged user (uid 65534, no capabilities), with a home
and an ``XDG_RUNTIME_DIR`` of its own, as a user on a laptop has them.

The checkout and its ``.venv`` must be reachable by that user: ``./bootstrap`` makes the venv
from /usr/bin/python3 (a Python under /root, mode 700, would keep the user out).
"""
from __future__ import annotations

import functools
import os
import shutil
import signal
import subprocess
import tempfile
import time
from contextlib import contextmanager
from typing import Iterator

import pytest

import leakcheck
from conftest import unprivileged_argv
from helpers import INVOKE, ROOT

USER_UID = 65534


@functools.lru_cache(maxsize=1)
def venv_reachable() -> str | None:
    """Why uid 65534 cannot run this checkout's venv (None: it can). Asked once a session:
    each answer costs a Python start (12 s in the emulated VM)."""
    python = os.path.join(os.path.dirname(INVOKE), "python")
    real = os.path.realpath(python)
    probe = subprocess.run(unprivileged_argv([python, "-c", "import invoke, nsutil"]),
                           cwd=ROOT, capture_output=True, text=True)
    if probe.returncode == 0:
        return None
    return (f"uid {USER_UID} cannot run {real} with the project installed "
            f"({probe.stderr.strip().splitlines()[-1:] or probe.returncode}): "
            "re-make .venv with ./bootstrap (from /usr/bin/python3)")


class UserLeak(AssertionError):
    """What a rootless test left: processes it started that outlived it, or records in its
    user's runtime directory."""


def leftovers(home: str) -> list[str]:
    """What the test that used ``home`` left behind (see :mod:`leakcheck`), as lines."""
    procs = leakcheck.started_with_home(home, USER_UID)
    records = leakcheck.runtime_records(os.path.join(home, "run"))
    return [f"process of uid {USER_UID}: {p}" for p in sorted(procs)] + \
           [f"record: {r}" for r in sorted(records)]


def _kill_leftovers(home: str) -> None:
    """SIGKILL the processes this test started as uid 65534 and that are still there (only
    those: :func:`leakcheck.started_with_home`), so a failed test leaves nothing running."""
    for line in leakcheck.started_with_home(home, USER_UID):
        try:
            os.kill(int(line.split()[1]), signal.SIGKILL)
        except ProcessLookupError:
            pass


def home_parent() -> str:
    """Where a test user's home goes: /tmp, or /dev/shm (a tmpfs) where /tmp is on overlayfs
    (a container's, tests/containerlike): a user's XDG_RUNTIME_DIR is a tmpfs (/run/user/UID),
    and overlayfs refuses an upper on overlayfs, which a user cannot cover with a tmpfs."""
    from nsutil.mountinfo import visible
    tmp = visible("/tmp")
    return "/dev/shm" if tmp is not None and tmp.fstype == "overlay" else "/tmp"


@contextmanager
def user_home(check: bool = True, parent: str | None = None) -> Iterator[str]:
    """A fresh home for uid 65534 (mode 0700, owned by it) in ``parent`` (default:
    :func:`home_parent`), with ``run/`` for its ``XDG_RUNTIME_DIR``; removed afterwards, also
    when the test fails. With ``check``, what the test left (processes it started that
    outlived it, records in ``run/nsrecipes``) fails it -- after it is killed and removed, so
    nothing stays either way."""
    home = tempfile.mkdtemp(prefix="nsr-home-", dir=parent or home_parent())
    left: list[str] = []
    try:
        os.mkdir(os.path.join(home, "run"), 0o700)
        for path in (home, os.path.join(home, "run")):
            os.chown(path, USER_UID, USER_UID)
            os.chmod(path, 0o700)
        yield home
        if check:
            # a holder that is being killed right now may take a moment to go
            deadline = time.monotonic() + 5
            left = leftovers(home)
            while left and time.monotonic() < deadline:
                time.sleep(0.1)
                left = leftovers(home)
    finally:
        _kill_leftovers(home)
        shutil.rmtree(home, ignore_errors=True)
    if left:
        raise UserLeak("left behind by a run as uid 65534:\n  " + "\n  ".join(left))


#: a user's PATH on Debian and Ubuntu (/etc/profile, /etc/login.defs): no sbin directory, so
#: /usr/sbin/ip, /usr/sbin/tc and /usr/sbin/runc are not on it
USER_PATH = "/usr/local/bin:/usr/bin:/bin:/usr/games"


def user_env(home: str, **extra: str) -> dict:
    """The environment of a login of uid 65534 with ``home``: HOME, XDG_RUNTIME_DIR, and a
    user's PATH (:data:`USER_PATH`, not root's)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("NSR_STATE_DIR", "XDG_RUNTIME_DIR", "HOME", "USER", "LOGNAME")}
    env.update(HOME=home, XDG_RUNTIME_DIR=os.path.join(home, "run"), USER="nobody",
               LOGNAME="nobody", PATH=USER_PATH)
    env.update(extra)
    return env


def as_user(home: str, *args: str, env: dict | None = None, timeout: float = 300,
            program: str = INVOKE, stdin=subprocess.DEVNULL) -> subprocess.CompletedProcess:
    """Run ``invoke ARGS`` (or ``program ARGS``) from the checkout as uid 65534 with ``home``."""
    why = venv_reachable()
    if why:
        pytest.fail(why)
    return subprocess.run(unprivileged_argv([program, *args]), cwd=ROOT,
                          env=user_env(home, **(env or {})), capture_output=True, text=True,
                          timeout=timeout, stdin=stdin)


@pytest.fixture
def home() -> Iterator[str]:
    """A home of uid 65534's own for one test (see :func:`user_home`)."""
    with user_home() as path:
        yield path
