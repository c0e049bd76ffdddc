"""The record of what nsrecipes made: a state directory and atomic JSON files.

``/run/nsrecipes`` (``$NSR_STATE_DIR`` overrides it) is made mode 0700 and owned by root, so
another user can neither read nor change it. Without root it is the user's own runtime
directory (``$XDG_RUNTIME_DIR/nsrecipes``, see :mod:`nsutil.rootless`), so a user's records
are that user's and root's cleanup never sees them. Files are written to a temporary name and
renamed into place, so a process killed mid-write never leaves a torn file.

A directory that was there before (``NSR_STATE_DIR`` pointed at a directory or a mount of the
user's own) is used as it is: its mode is not changed, and it is never removed. Only a
directory nsrecipes made itself carries :data:`MADE_MARK`, and only such a one is pruned.

:func:`locked` is the lock on the directory itself; :func:`prune` removes the directory
only under it, and a lock is only granted on the directory that is there when it is
granted (a lock on a pruned one would exclude nobody).
"""
from __future__ import annotations

import errno as _errno
import fcntl
import json
import os
from contextlib import contextmanager
from typing import Any, Iterator

from .errors import SyscallError
from . import rootless
from .process import deferred_sigint
from .names import STATE_DIR


#: the file that says nsrecipes made the state directory (so it may remove it when empty)
MADE_MARK = ".made-by-nsrecipes"


def base_dir() -> str:
    """The state directory: ``$NSR_STATE_DIR``, else ``/run/nsrecipes`` as root, else the
    user's own runtime directory (:func:`rootless.runtime_dir`, checked to be the user's)."""
    if "NSR_STATE_DIR" in os.environ:
        return os.environ["NSR_STATE_DIR"]
    if not rootless.decide():
        return STATE_DIR
    path = rootless.runtime_dir()
    rootless.check_owned(path)
    return path


def _make_marked(base: str) -> None:
    """mkdir ``base`` and put :data:`MADE_MARK` in it, unless it is there already. A Ctrl-C
    is held back in between: one that landed after the mkdir and before the mark (a test
    that interrupts env-create did) left an empty directory without its mark, which then
    counted as the user's and stayed for ever."""
    with deferred_sigint():
        try:
            os.mkdir(base, 0o700)
        except FileExistsError:
            return
        os.chmod(base, 0o700)             # whatever the umask said
        _put_mark(base)


def _put_mark(base: str) -> None:
    """Create :data:`MADE_MARK` in ``base``: nsrecipes made this directory."""
    os.close(os.open(os.path.join(base, MADE_MARK), os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC,
                     0o600))


def state_dir(*parts: str, create: bool = True) -> str:
    """Path of the state directory (or a subdirectory); created 0700 when ``create``.

    A state directory nsrecipes creates gets :data:`MADE_MARK`; one that exists already is
    left as it is (its mode, owner and content are the user's)."""
    base = base_dir()
    path = os.path.join(base, *parts)
    if not create:
        return path
    for _ in range(100):
        try:
            os.makedirs(os.path.dirname(base.rstrip("/")) or "/", mode=0o755, exist_ok=True)
            _make_marked(base)
            # one level at a time, never makedirs: if a prune removed the directory since
            # the mkdir above, makedirs would make it again without its mark, and an
            # unmarked directory is the user's: never pruned, left for ever
            below = base
            for part in parts:
                below = os.path.join(below, part)
                try:
                    os.mkdir(below, 0o700)
                except FileExistsError:
                    pass
            return path
        except FileNotFoundError:
            continue                      # pruned half-way: make it again, with its mark
        except OSError as exc:
            raise SyscallError.from_oserror(f"mkdir({path!r})", exc) from None
    raise SyscallError(f"mkdir({path!r})", _errno.ENOENT,
                       hint="another process keeps removing the state directory")


def atomic_write_json(path: str, data: Any) -> None:
    """Write ``data`` as JSON to ``path`` atomically (temp file, fsync, rename); indented
    for people to read unless it is big (a 10,000-host topology: Python's indenting encoder
    is pure Python, the compact one is C, 20x faster)."""
    tmp = f"{path}.tmp.{os.getpid()}"
    text = json.dumps(data, sort_keys=True, separators=(",", ":"))
    if len(text) < 1 << 16:
        text = json.dumps(data, indent=2, sort_keys=True)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:       # a Ctrl-C between the write and the rename too
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(exc, OSError):
            raise SyscallError.from_oserror(f"write({path!r})", exc) from None
        raise


def read_json(path: str) -> Any:
    """Read a JSON state file; ``None`` if it does not exist."""
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return None


def _same_file(fd: int, path: str) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


@contextmanager
def locked(shared: bool = False) -> Iterator[int]:
    """An flock on the state directory (created if needed), exclusive or ``shared``; yields
    the locked descriptor (``fcntl.flock`` on it up- or downgrades the lock).

    A waiter whose directory was pruned (and maybe made again by someone else) while it
    waited holds a lock on a removed inode, which excludes nobody: so the lock is checked to
    be on the directory at the path once granted, and taken again when it is not.
    """
    for _ in range(100):
        path = state_dir()
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            continue  # pruned between making and opening it
        except OSError as exc:
            raise SyscallError.from_oserror(f"open({path!r})", exc) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
            if _same_file(fd, path):
                break
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
    else:
        raise SyscallError(f"flock({path!r})", _errno.EAGAIN,
                           hint="the state directory keeps being removed and made again")
    try:
        yield fd
    finally:
        os.close(fd)


def drop_torn_writes(directory: str) -> None:
    """Remove the temporary files of :func:`atomic_write_json` (``NAME.tmp.PID``) in
    ``directory`` whose writer is gone: a writer killed (SIGKILL) before its rename leaves
    one, and nothing else ever would remove it."""
    try:
        entries = os.listdir(directory)
    except OSError:
        return
    for entry in entries:
        head, sep, pid = entry.rpartition(".tmp.")
        if sep and head and pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
            try:
                os.unlink(os.path.join(directory, entry))
            except OSError:
                pass    # gone meanwhile, or not a file: nothing to do


def prune(have_lock: bool = False) -> None:
    """Remove the state directory's empty ``net/`` subdirectory, and the directory itself
    when it is empty and nsrecipes made it (:data:`MADE_MARK`), so a host with nothing of
    nsrecipes on it has no /run/nsrecipes either; a directory the user had stays. Done under
    :func:`locked` (``have_lock``: the caller holds it), so it never removes the
    directory between another process's lock and its first entry."""
    base = state_dir(create=False)
    if not have_lock:
        if os.path.isdir(base):
            with locked():
                prune(have_lock=True)
        return
    for directory in (os.path.join(base, "net"), base):
        drop_torn_writes(directory)
    try:
        os.rmdir(os.path.join(base, "net"))
    except OSError:
        pass  # not empty, or already gone: nothing to do
    mark = os.path.join(base, MADE_MARK)
    try:
        if set(os.listdir(base)) != {MADE_MARK}:
            return
        os.unlink(mark)
        os.rmdir(base)
    except OSError:     # gone, or a mount point still: if it stays, it stays marked as ours
        if os.path.isdir(base) and not os.path.exists(mark):
            try:
                _put_mark(base)
            except OSError:
                pass
