"""Environments, the lowest room: names, the record, the locks, and which processes belong.

An environment ``NAME`` lives in ``/run/nsrecipes/NAME/``: its record ``env.json``, written
atomically (temporary file, fsync, rename), and one file per namespace that a bind mount keeps
alive (:mod:`recipes.env.holder`). The state directory is 0700 root, so another user can neither
read nor enter nor remove an environment.

Which processes belong to an environment is decided by the kernel's own identity of the
namespaces: every process whose ``/proc/PID/ns/TYPE`` has the inode of one of the bound
namespace files (:func:`members`).

Without root (the record says ``"rootless": true``) nothing is bound: a user cannot mount in
the host's mount namespace, so the holder itself is the anchor. Its user namespace owns every
other one, and the environment's processes are those in that user namespace
(:func:`rootless_members`); once the holder is gone its namespaces go with their last
process, and removal kills what is left (:func:`anchor_inodes`).

Concurrency: a short exclusive flock on ``/run/nsrecipes`` covers naming, the private mount
and pruning the directory (a lock is only taken on the directory that is there when it is
granted: :func:`nsutil.state.locked`); a create holds it shared from making the mount
private until its files are bound, so the last removal cannot unmount it in between. A
flock on ``/run/nsrecipes/NAME`` is held for the whole create or remove, and it is
inherited by the helper process that starts the holder, so ``cleanup`` running after the
tool was SIGKILLed mid-create waits until that helper has finished and then removes it all.
"""
from __future__ import annotations

import fcntl
import os
import re
from contextlib import contextmanager
from typing import Callable, Iterator, TextIO

from nsutil import process, state
from nsutil import procfs
from nsutil.backend import Placeholder, Runner
from nsutil.errors import InvalidInput, NotFound, NsrError, SyscallError
from nsutil.rootless import require_namespaces
from nsutil.names import PREFIX, check_name
from nsutil.nstypes import NS_TYPES, NsType, flags_of, parse_types

SECTION = "environments (all six namespaces, composed and kept)"
STATE_FILE = "env.json"
#: names of the state directory's own entries, which no environment may take
RESERVED = {"net", "userns.json"}
KIND = "env"
#: a record being made: ``.env-NAME.PID.tmp``, renamed to ``NAME`` once complete
TMP_RE = re.compile(r"^\.env-(.+)\.(\d+)\.tmp$")
NSFS_DEV = os.stat("/proc/self/ns/uts").st_dev
#: env name -> fd holding its flock in this process (create holds it across its steps)
HELD: dict[str, int] = {}


# --- names, paths, records ------------------------------------------------------------------

def check_env_name(name: str) -> str:
    """An environment name: a valid file and netns name, used as the user gives it (as ``ip
    netns add`` does). The names nsrecipes makes up itself carry the ``nsr`` prefix; what is
    nsrecipes' is decided by its records under the state directory, not by a prefix."""
    check_name(name, what="environment name")
    if name in RESERVED or name.startswith(f"{PREFIX}-c-"):
        raise InvalidInput(f"environment name {name!r} is taken by nsrecipes' own records",
                           hint="pick another name (not net, userns.json, nor nsr-c-*: "
                                "containers' names)")
    return name


def base_dir() -> str:
    """The state directory (``/run/nsrecipes``), not created."""
    return state.state_dir(create=False)


def env_dir(name: str) -> str:
    """``/run/nsrecipes/NAME``."""
    return os.path.join(base_dir(), name)


def ns_file(name: str, t: NsType | str) -> str:
    """``/run/nsrecipes/NAME/TYPE``: the bind mount that keeps one namespace alive."""
    return os.path.join(env_dir(name), t if isinstance(t, str) else t.name)


def check_path(path: str, what: str = "mount target") -> str:
    """An absolute path below ``/`` as seen inside (a mount target or source, a working
    directory), normalised; ``what`` names it in the error."""
    if not path or not path.startswith("/") or "\0" in path:
        raise InvalidInput(f"{what} {path!r} is not an absolute path",
                           hint="give a path like /mnt/data (it must exist inside)")
    norm = "/" + os.path.normpath(path).lstrip("/")    # normpath keeps a leading "//"
    if norm == "/":
        raise InvalidInput(f"{what} '/' is not allowed", hint="give a directory below /")
    return norm


def read_state(name: str) -> dict | None:
    """The environment's record, or ``None`` when it does not exist."""
    try:
        data = state.read_json(os.path.join(env_dir(name), STATE_FILE))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("kind") == KIND else None


def write_state(name: str, data: dict) -> None:
    state.atomic_write_json(os.path.join(env_dir(name), STATE_FILE), data)


def update_state(name: str, fn: Callable[[dict], None]) -> dict:
    """Read-modify-write the record (callers hold the environment's lock)."""
    data = read_state(name)
    if data is None:
        raise NotFound(f"environment {name!r} does not exist", hint="see `invoke env-ls`")
    fn(data)
    write_state(name, data)
    return data


def names() -> list[str]:
    """Names of the recorded environments, sorted."""
    base = base_dir()
    try:
        entries = sorted(os.listdir(base))
    except OSError:
        return []
    return [e for e in entries if not e.startswith(".") and read_state(e) is not None]


def env_entries() -> list[str]:
    """Environment directories, also half-made ones (``.env-NAME.PID.tmp``)."""
    try:
        entries = os.listdir(base_dir())
    except OSError:
        return []
    return [e for e in entries if TMP_RE.match(e) or
            (not e.startswith(".") and os.path.isfile(os.path.join(base_dir(), e, STATE_FILE))
             and read_state(e) is not None)]


# --- locks ----------------------------------------------------------------------------------

def open_dir(path: str) -> int:
    """An O_DIRECTORY descriptor of ``path`` to flock (close-on-exec)."""
    try:
        return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise SyscallError.from_oserror(f"open({path!r})", exc) from None


@contextmanager
def global_lock() -> Iterator[int]:
    """Exclusive flock on the state directory (naming, the private mount); held briefly.
    Yields the locked descriptor (see :func:`nsutil.state.locked`)."""
    with state.locked() as fd:
        yield fd


@contextmanager
def env_lock(name: str) -> Iterator[None]:
    """Exclusive flock on ``/run/nsrecipes/NAME`` (re-entrant within this process)."""
    if name in HELD:
        yield
        return
    try:
        fd = os.open(env_dir(name), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NotFound(f"environment {name!r} does not exist",
                       hint="see `invoke env-ls` for the environments there are") from None
    except OSError as exc:
        raise SyscallError.from_oserror(f"open({env_dir(name)!r})", exc) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        HELD[name] = fd
        yield
    finally:
        HELD.pop(name, None)
        os.close(fd)


def release_lock(name: str) -> None:
    """Drop the lock that :func:`recipes.env.configure.record` took for ``name`` (if held)."""
    fd = HELD.pop(name, None)
    if fd is not None:
        os.close(fd)


@contextmanager
def lock_unless_explain(run: Runner, *names_: str) -> Iterator[None]:
    """The environments' locks, in name order (no deadlock between two steps), except under
    --explain, where nothing is locked."""
    if run.explain:
        yield
        return
    with _nested_locks(sorted(set(names_))):
        yield


@contextmanager
def _nested_locks(names_: list[str]) -> Iterator[None]:
    if not names_:
        yield
        return
    with env_lock(names_[0]):
        with _nested_locks(names_[1:]):
            yield


# --- processes and namespaces ---------------------------------------------------------------


def holder_alive(st: dict) -> bool:
    """True while the environment's holder process runs."""
    return procfs.same_process(st.get("holder"))


def bound_inodes(name: str) -> dict[str, int]:
    """{type: inode} of the namespaces bind-mounted under /run/nsrecipes/NAME."""
    found = {}
    for t in NS_TYPES:
        try:
            st = os.stat(ns_file(name, t))
        except OSError:
            continue
        if st.st_dev == NSFS_DEV:
            found[t] = st.st_ino
    return found


def _ns_link(pid: str, proc: str) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/{proc}")  # "net:[4026531833]"; cheaper than stat
    except OSError:
        return None


def proc_table() -> dict[int, dict[str, int]]:
    """{pid: {type: inode}} for every process (one pass over /proc)."""
    table: dict[int, dict[str, int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        inodes = {}
        for t in NS_TYPES.values():
            link = _ns_link(entry, t.proc)
            if link:
                inodes[t.name] = int(link[link.index("[") + 1:-1])
        if inodes:
            table[int(entry)] = inodes
    return table


def members(inodes: dict[str, int], table: dict[int, dict[str, int]] | None = None) -> list[int]:
    """Processes in any of the given namespaces (the environment's processes)."""
    if not inodes:
        return []
    me = os.getpid()
    if table is not None:
        return sorted(pid for pid, ns in table.items()
                      if pid != me and any(ns.get(t) == ino for t, ino in inodes.items()))
    items = [(NS_TYPES[t].proc, f"{NS_TYPES[t].proc}:[{ino}]") for t, ino in inodes.items()]
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        for proc, want in items:
            link = _ns_link(entry, proc)
            if link is None:
                break  # gone, or a zombie (its namespaces are released already)
            if link == want:
                found.append(int(entry))
                break
    return sorted(found)


def processes(name: str) -> list[int]:
    """Host pids of the processes in environment ``name`` (holder included)."""
    st = read_state(name) or {}
    if st.get("rootless"):
        return rootless_members(st)
    return members(bound_inodes(name))


def holder_inodes(st: dict) -> dict[str, int]:
    """{type: inode} of the namespaces the environment's holder is in ({} once it is gone)."""
    h = st.get("holder") or {}
    found: dict[str, int] = {}
    if not procfs.same_process(h):
        return found
    for t in st.get("types", []):
        link = _ns_link(str(h["pid"]), NS_TYPES[t].proc)
        if link:
            found[t] = int(link[link.index("[") + 1:-1])
    return found if procfs.same_process(h) else {}   # not another process's, reusing the pid


def anchor_inodes(name: str, st: dict) -> dict[str, int]:
    """{type: inode} of what keeps the environment: its bound files as root; without root,
    the live holder's namespaces ({} when it is gone: nothing else keeps them)."""
    return holder_inodes(st) if st.get("rootless") else bound_inodes(name)


def rootless_members(st: dict, table: dict[int, dict[str, int]] | None = None) -> list[int]:
    """Processes of a rootless environment: those in its user namespace (every command that
    joins it joins that first) and in one of its other namespaces -- the user namespace can
    be the one all of the user's environments share (:mod:`recipes.env.userns`). While the
    holder runs, its namespaces are the identity; once it is gone, the recorded inodes are
    matched (an inode of a freed namespace can be given to a new one: two at once, not)."""
    live = holder_inodes(st)
    ns = live or {t: i for t, i in (st.get("ns") or {}).items() if i}
    user = ns.get("user")
    if user is None:
        return []
    others = {t: i for t, i in ns.items() if t != "user"}
    if table is None:
        table = proc_table()
    me = os.getpid()
    return sorted(pid for pid, inodes in table.items()
                  if pid != me and inodes.get("user") == user
                  and any(inodes.get(t) == i for t, i in others.items()))


def holder_of(st: dict) -> process.Holder:
    """A :class:`nsutil.process.Holder` for the recipes that take one (uts, user, ipc)."""
    h = st.get("holder") or {}
    types = parse_types(st["types"])
    return process.Holder(h.get("pid", 0), h.get("parent", 0), flags_of(types))


# --- a live environment ---------------------------------------------------------------------

def load(name: str, run: Runner | None = None, *, need: str | None = None,
         alive: bool = True, option: str | None = None) -> dict:
    """The record of a live environment, checked for having the namespace ``need`` (which
    ``option``, e.g. ``--domainname``, needs: the error then names it)."""
    check_env_name(name)
    if run is not None and run.explain:  # the real types when the record can be read
        try:
            types = (read_state(name) or {}).get("types") or list(NS_TYPES)
        except OSError:
            types = list(NS_TYPES)
        return {"name": name, "types": types, "holder": {"pid": Placeholder("$PID")},
                "parent": {"pid": Placeholder("$PID")}, "ns": {}, "veths": [], "links": [],
                "rootless": run.rootless}
    require_namespaces(f"environment {name}")
    st = read_state(name)
    if st is None:
        raise NotFound(f"environment {name!r} does not exist",
                       hint="see `invoke env-ls` for the environments there are")
    if need and need not in st["types"]:
        lacks = (f"{option} needs a {need.upper()} namespace: environment {name!r} has none"
                 if option else f"environment {name!r} has no {need} namespace")
        raise InvalidInput(f"{lacks} (it has {','.join(st['types'])})",
                           hint=f"create one with --ns including {need}")
    if alive and not holder_alive(st):
        raise dead(name, st)
    return st


def dead(name: str, st: dict) -> NsrError:
    """The error for an environment whose holder is gone."""
    return NsrError(f"environment {name!r} is dead: its holder (pid "
                    f"{(st.get('holder') or {}).get('pid')}) is gone",
                    hint=f"remove it with `invoke env-rm {name}` and create it again")


# --- quiet runs (cleanup, the Python API) ---------------------------------------------------

def quiet_runner(backend: str | None = "native") -> Runner:
    """A Runner that keeps what it made and prints nothing (cleanup, undo)."""
    return Runner(backend=backend, keep=True, out=devnull())


def devnull() -> TextIO:
    """One /dev/null opened for writing, shared by the quiet runners."""
    global _DEVNULL
    if _DEVNULL is None:
        _DEVNULL = open(os.devnull, "w")
    return _DEVNULL


_DEVNULL = None
