"""Shared helpers for the tests: run the real CLI in a subprocess."""
from __future__ import annotations

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INVOKE = os.path.join(os.path.dirname(sys.executable), "invoke")


def cli(*args: str, env: dict | None = None, prefix: list[str] | None = None,
        timeout: float = 120, unset: list[str] | None = None) -> subprocess.CompletedProcess:
    """Run ``invoke ARGS`` from the project root, as a user would; capture its output
    (``env`` added to this process's environment, the names in ``unset`` taken from it)."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    for name in unset or []:
        full_env.pop(name, None)
    return subprocess.run((prefix or []) + [INVOKE, *args], cwd=ROOT, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def as_nobody(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``invoke ARGS`` as uid 65534 with no capabilities (setpriv)."""
    from conftest import unprivileged_argv
    return cli(*args, env={"HOME": "/tmp", **(env or {})}, prefix=unprivileged_argv([])[:-1] + ["--"])


def checkout_under(*dirs: str) -> str | None:
    """The first of ``dirs`` (e.g. /tmp, /run) that holds this checkout, or None. The sandboxes
    that give a test fresh tmpfs there would hide the checkout and its venv from the CLI."""
    real = os.path.realpath(ROOT) + "/"
    return next((d for d in dirs if real.startswith(d.rstrip("/") + "/")), None)


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    """Assert the command failed with exactly one line on stderr that has a hint; return it."""
    assert proc.returncode != 0, proc.stdout
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert "hint:" in lines[0], lines[0]
    assert "Traceback" not in proc.stderr
    return lines[0]


NSR = os.path.join(os.path.dirname(sys.executable), "nsr")


def nsr(*args: str, cwd: str = "/", timeout: float = 120,
        stdin=subprocess.DEVNULL) -> subprocess.CompletedProcess:
    """Run the installed ``nsr ARGS`` from ``cwd`` (default /, far from the checkout)."""
    return subprocess.run([NSR, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, stdin=stdin)


def require_tool(path: str, package: str) -> None:
    """Skip the calling test when ``path`` (a program the suite needs, not nsrecipes) is
    missing: which package has it, and that ``./bootstrap pytest`` installs it."""
    import shutil
    import pytest
    if not (os.access(path, os.X_OK) if os.path.isabs(path) else shutil.which(path)):
        pytest.skip(f"{path} is missing: apt-get install {package} (./bootstrap pytest "
                    "installs it with the suite's other tools)")
