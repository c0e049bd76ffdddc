"""The record of what nsrecipes made: a state directory and atomic JSON files.

``/run/nsrecipes`` (``$NSR_STATE_DIR`` overrides it) is mode 0700 and owned by root, so
another user can neither read nor change it. Files are written to a temporary name and
renamed into place, so a process killed mid-write never leaves a torn file.
"""
from __future__ import annotations

import json
import os
from typing import Any

from .errors import SyscallError
from .names import STATE_DIR


def state_dir(*parts: str, create: bool = True) -> str:
    """Path of the state directory (or a subdirectory); created 0700 when ``create``."""
    base = os.environ.get("NSR_STATE_DIR", STATE_DIR)
    path = os.path.join(base, *parts)
    if create:
        try:
            os.makedirs(path, mode=0o700, exist_ok=True)
            os.chmod(base, 0o700)
        except OSError as exc:
            raise SyscallError.from_oserror(f"mkdir({path!r})", exc) from None
    return path


def atomic_write_json(path: str, data: Any) -> None:
    """Write ``data`` as JSON to ``path`` atomically (temp file, fsync, rename)."""
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise SyscallError.from_oserror(f"write({path!r})", exc) from None


def read_json(path: str) -> Any:
    """Read a JSON state file; ``None`` if it does not exist."""
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return None


def prune() -> None:
    """Remove the state directory (and its ``net/`` subdirectory) when empty, so a host
    with nothing of nsrecipes on it has no /run/nsrecipes either."""
    base = state_dir(create=False)
    for path in (os.path.join(base, "net"), base):
        try:
            os.rmdir(path)
        except OSError:
            pass  # not empty, still a mount point, or already gone: nothing to do
