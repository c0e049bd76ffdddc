"""Run the real CLI as a real unprivileged user (uid 65534, no capabilities), with a home
and an ``XDG_RUNTIME_DIR`` of its own, as a user on a laptop has them.

The checkout and its ``.venv`` must be reachable by that user: ``./bootstrap`` makes the venv
from /usr/bin/python3 (a Python under /root, mode 700, would keep the user out).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from contextlib import contextmanager
from typing import Iterator

import pytest

from conftest import unprivileged_argv
from helpers import INVOKE, ROOT

USER_UID = 65534


def venv_reachable() -> str | None:
    """Why uid 65534 cannot run this checkout's venv (None: it can)."""
    python = os.path.join(os.path.dirname(INVOKE), "python")
    real = os.path.realpath(python)
    probe = subprocess.run(unprivileged_argv([python, "-c", "import invoke, nsutil"]),
                           cwd=ROOT, capture_output=True, text=True)
    if probe.returncode == 0:
        return None
    return (f"uid {USER_UID} cannot run {real} with the project installed "
            f"({probe.stderr.strip().splitlines()[-1:] or probe.returncode}): "
            "re-make .venv with ./bootstrap (from /usr/bin/python3)")


@contextmanager
def user_home() -> Iterator[str]:
    """A fresh home for uid 65534 (mode 0700, owned by it) with ``run/`` for its
    ``XDG_RUNTIME_DIR``; removed afterwards, also when the test fails."""
    home = tempfile.mkdtemp(prefix="nsr-home-", dir="/tmp")
    try:
        os.mkdir(os.path.join(home, "run"), 0o700)
        for path in (home, os.path.join(home, "run")):
            os.chown(path, USER_UID, USER_UID)
            os.chmod(path, 0o700)
        yield home
    finally:
        shutil.rmtree(home, ignore_errors=True)


def user_env(home: str, **extra: str) -> dict:
    """The environment of a login of uid 65534 with ``home``: HOME, XDG_RUNTIME_DIR, PATH."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("NSR_STATE_DIR", "XDG_RUNTIME_DIR", "HOME", "USER", "LOGNAME")}
    env.update(HOME=home, XDG_RUNTIME_DIR=os.path.join(home, "run"), USER="nobody",
               LOGNAME="nobody")
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
