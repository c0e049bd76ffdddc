"""Environments: namespaces composed step by step and kept until removed (issue 4).

The document's sections each make one namespace and throw it away. An *environment* keeps a
set of them alive under a name, so that later steps can add to it, commands can be run in
it, and it can be listed and removed -- from the command line (``env-*`` tasks) or from a
provisioning script (:class:`Environment`).

How an environment is kept, the way util-linux does it:

* a **holder** process is started in the new namespaces (``unshare --TYPE=FILE ... --fork``);
  with a PID namespace it is PID 1 there and reaps orphans (the shell form runs a tiny
  ``wait`` loop as PID 1, the native one :func:`nsutil.process.reap_forever`);
* each namespace is **bind-mounted** on ``/run/nsrecipes/NAME/TYPE`` (``unshare
  --uts=/run/nsrecipes/NAME/uts`` does exactly that), so it lives as long as the bind even if
  every process in it dies. A mount-namespace file can only be bound on a mount that is not
  shared, so ``/run/nsrecipes`` is made a private bind mount of itself while environments
  exist, and unmounted again when the last one is removed. The kernel also binds one only
  if its id is greater than the binder's own namespace's (``mnt_ns_loop``); from 6.18 ids
  come from per-CPU batches, so the mount namespace's file is bound by us once the holder
  runs, after checking that (a holder on the wrong CPU is made again on another one);
* the network namespace is also bound on ``/run/netns/NAME`` (``ip netns attach``), so
  ``ip netns``, ``ip -n NAME`` and the network recipes see it by the environment's name;
* the record ``/run/nsrecipes/NAME/env.json`` is written atomically (temporary file,
  fsync, rename); the state directory is 0700 root, so another user can neither read nor
  enter nor remove an environment.

Which processes belong to an environment is decided by the kernel's own identity of the
namespaces: every process whose ``/proc/PID/ns/TYPE`` has the inode of one of the bound
namespace files. ``env-rm`` and ``cleanup`` kill exactly those, so they work also after the
holder or the tool itself was killed with SIGKILL (the bound files are the anchor).

Concurrency: a short exclusive flock on ``/run/nsrecipes`` covers naming, the private mount
and pruning the directory (a lock is only taken on the directory that is there when it is
granted: :func:`nsutil.state.locked`); a create holds it shared from making the mount
private until its files are bound, so the last removal cannot unmount it in between. A
flock on ``/run/nsrecipes/NAME`` is held for the whole create or remove, and it is
inherited by the helper process that starts the holder, so ``cleanup`` running after the
tool was SIGKILLed mid-create waits until that helper has finished and then removes it all.
"""
from __future__ import annotations

import errno as _errno
import fcntl
import json
import os
import re
import shlex
import shutil
import signal
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence

from nsutil import idmap, process, state
from nsutil import shell as nshell
from nsutil import syscalls as sc
from nsutil.backend import Placeholder, Runner, Step
from nsutil.errors import (CommandError, Conflict, InvalidInput, NotFound, NsrError,
                           SyscallError, require_root)
from nsutil.names import check_hostname, check_ifname, check_name, is_ours, prefixed, scope_id
from nsutil.nstypes import NS_TYPES, NsType, flags_of, mntns_id, parse_types

from .common import Leftover, holder_setup, join_types

SECTION = "environments (all six namespaces, composed and kept)"
STATE_FILE = "env.json"
KIND = "env"
DEFAULT_TYPES = "uts,ipc,pid,mnt,net"
NETNS_DIR = "/run/netns"
#: PID 1 of the shell form: `wait` reaps every child, also orphans re-parented to it
REAPER = "while :; do sleep infinity & wait; done"
_TMP_RE = re.compile(r"^\.env-(.+)\.(\d+)\.tmp$")
_NSFS_DEV = os.stat("/proc/self/ns/uts").st_dev
#: env name -> fd holding its flock in this process (create holds it across its steps)
_HELD: dict[str, int] = {}


# --- names, paths, records ------------------------------------------------------------------

def check_env_name(name: str) -> str:
    """An environment name: a valid file and netns name that carries the ``nsr`` prefix."""
    check_name(name, what="environment name")
    if not is_ours(name):
        raise InvalidInput(f"environment name {name!r} does not start with 'nsr'",
                           hint=f"call it nsr-{name}: everything nsrecipes makes carries the "
                                "prefix, so cleanup can tell it from what others made")
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


def read_state(name: str) -> dict | None:
    """The environment's record, or ``None`` when it does not exist."""
    try:
        data = state.read_json(os.path.join(env_dir(name), STATE_FILE))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("kind") == KIND else None


def _write_state(name: str, data: dict) -> None:
    state.atomic_write_json(os.path.join(env_dir(name), STATE_FILE), data)


def _update_state(name: str, fn: Callable[[dict], None]) -> dict:
    """Read-modify-write the record (callers hold the environment's lock)."""
    data = read_state(name)
    if data is None:
        raise NotFound(f"environment {name!r} does not exist", hint="see `invoke env-ls`")
    fn(data)
    _write_state(name, data)
    return data


def names() -> list[str]:
    """Names of the recorded environments, sorted."""
    base = base_dir()
    try:
        entries = sorted(os.listdir(base))
    except OSError:
        return []
    return [e for e in entries if not e.startswith(".") and read_state(e) is not None]


# --- locks ----------------------------------------------------------------------------------

def _open_dir(path: str) -> int:
    try:
        return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise SyscallError.from_oserror(f"open({path!r})", exc) from None


@contextmanager
def _global_lock() -> Iterator[int]:
    """Exclusive flock on the state directory (naming, the private mount); held briefly.
    Yields the locked descriptor (see :func:`nsutil.state.locked`)."""
    with state.locked() as fd:
        yield fd


@contextmanager
def _env_lock(name: str) -> Iterator[None]:
    """Exclusive flock on ``/run/nsrecipes/NAME`` (re-entrant within this process)."""
    if name in _HELD:
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
        _HELD[name] = fd
        yield
    finally:
        _HELD.pop(name, None)
        os.close(fd)


# --- processes and namespaces ---------------------------------------------------------------

def _same_process(rec: dict | None) -> bool:
    """True if the process recorded as {pid, start} still runs (not a re-used pid)."""
    if not rec or not rec.get("pid"):
        return False
    pid = int(rec["pid"])
    return process.pid_alive(pid) and process.start_time(pid) == rec.get("start")


def holder_alive(st: dict) -> bool:
    """True while the environment's holder process runs."""
    return _same_process(st.get("holder"))


def bound_inodes(name: str) -> dict[str, int]:
    """{type: inode} of the namespaces bind-mounted under /run/nsrecipes/NAME."""
    found = {}
    for t in NS_TYPES:
        try:
            st = os.stat(ns_file(name, t))
        except OSError:
            continue
        if st.st_dev == _NSFS_DEV:
            found[t] = st.st_ino
    return found


def _ns_link(pid: str, proc: str) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/{proc}")  # "net:[4026531833]"; cheaper than stat
    except OSError:
        return None


def _proc_table() -> dict[int, dict[str, int]]:
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


def _members(inodes: dict[str, int], table: dict[int, dict[str, int]] | None = None) -> list[int]:
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
    return _members(bound_inodes(name))


def _holder(st: dict) -> process.Holder:
    """A :class:`nsutil.process.Holder` for the recipes that take one (uts, user, ipc)."""
    h = st.get("holder") or {}
    types = parse_types(st["types"])
    return process.Holder(h.get("pid", 0), h.get("parent", 0), flags_of(types))


# --- starting the holder --------------------------------------------------------------------

def binds_by_unshare(types: Sequence[NsType]) -> bool:
    """Whether ``unshare --TYPE=FILE`` can bind the files itself.

    util-linux binds from a helper child only when it also makes a mount namespace; without
    one, unshare binds after its own unshare(), and once in a new user namespace it may no
    longer mount on the host (EPERM). Then the files are bound by ``mount --bind``.
    """
    names_ = {t.name for t in types}
    return not ("user" in names_ and "mnt" not in names_)


def bound_later(types: Sequence[NsType]) -> list[NsType]:
    """The types whose files are bound by ``mount --bind`` once the holder runs: all of them
    when unshare cannot bind (:func:`binds_by_unshare`), else the mount namespace's only, which
    must be checked first (:func:`_start_in_bindable_order`)."""
    if not binds_by_unshare(types):
        return list(types)
    return [t for t in types if t.name == "mnt"]


def unshare_argv(name: str, types: Sequence[NsType]) -> list[str]:
    """``unshare --uts=/run/nsrecipes/NAME/uts ... --mount [--fork --kill-child --mount-proc]
    -- ...`` (the files of :func:`bound_later` are bound afterwards)."""
    names_ = {t.name for t in types}
    later = bound_later(types)
    argv = ["unshare"] + [t.option if t in later else f"{t.option}={ns_file(name, t)}"
                          for t in types]
    if "pid" in names_:
        argv += ["--fork", "--kill-child"] + (["--mount-proc"] if "mnt" in names_ else [])
        return argv + ["--", "sh", "-c", REAPER]
    return argv + ["--", "sleep", "infinity"]


def bind_argvs(name: str, pid: int | str, types: Sequence[NsType]) -> list[list[str]]:
    """``mount --bind /proc/PID/ns/TYPE /run/nsrecipes/NAME/TYPE`` for each type."""
    return [["mount", "--bind", f"/proc/{pid}/ns/{t.proc}", ns_file(name, t)] for t in types]


def _bindable(pid: int) -> bool:
    """Whether the kernel will bind ``pid``'s mount namespace here: its id must be greater
    than ours (``mnt_ns_loop``; see :func:`nsutil.nstypes.mntns_id`)."""
    theirs, ours = mntns_id(pid), mntns_id("self")
    return theirs is None or ours is None or theirs > ours


def _start_in_bindable_order(types: Sequence[NsType], start: Callable[[], tuple[int, int]],
                             stop: Callable[[int, int], None]) -> tuple[int, int]:
    """``start()`` the holder (-> pid, parent) until its mount namespace can be bound.

    From kernel 6.18 a mount namespace's id comes from a per-CPU batch, so a holder made on
    another CPU than the one our own namespace was made on can get the smaller id, and the
    bind fails with EINVAL (only inside a mount namespace other than the first, as in a
    container or a test's own). Then the holder is ``stop``-ped and made again pinned to each
    CPU in turn, as snapd's snap-confine does: the CPU that gave our id gives greater ones.
    """
    pid, parent = start()
    if all(t.name != "mnt" for t in types) or _bindable(pid):
        return pid, parent
    mine = os.sched_getaffinity(0)
    try:
        for cpu in sorted(mine) * 2:
            stop(pid, parent)
            os.sched_setaffinity(0, {cpu})
            pid, parent = start()
            if _bindable(pid):
                for p in (pid, parent):
                    try:
                        os.sched_setaffinity(p, mine)  # the holder is pinned nowhere
                    except ProcessLookupError:
                        pass
                return pid, parent
    finally:
        os.sched_setaffinity(0, mine)
    theirs = mntns_id(pid)
    stop(pid, parent)
    raise NsrError(f"the kernel refuses to bind the new mount namespace (its id {theirs} is "
                   f"not above ours, {mntns_id('self')}) on every CPU",
                   hint="a kernel (6.18+) mnt_ns_loop quirk inside a nested mount namespace: "
                        "run from the host's first mount namespace, or retry")


def _native_holder(name: str, types: Sequence[NsType]) -> tuple[int, int]:
    """fork, setsid, unshare (and fork again for a PID namespace), make / private and mount
    /proc as ``unshare --mount --mount-proc`` does: (holder pid, parent pid)."""
    holder = process.spawn_holder(flags_of(types), setup=holder_setup(types, mount_proc=True),
                                  detach=True, quiet=True, name=name)
    return holder.pid, holder.parent


def _bind_all(name: str, pid: int, types: Sequence[NsType]) -> None:
    """``mount --bind /proc/PID/ns/TYPE /run/nsrecipes/NAME/TYPE`` for every type."""
    for t in types:
        sc.mount(f"/proc/{pid}/ns/{t.proc}", ns_file(name, t), None, sc.MS_BIND)


def _unbind_files(name: str) -> None:
    """Undo whatever is bound on the environment's namespace files (a holder given up)."""
    for t in NS_TYPES:
        while t in bound_inodes(name):
            sc.umount(ns_file(name, t), sc.MNT_DETACH)


def _holder_record(pid: int, parent: int, types: Sequence[NsType]) -> dict:
    ns = {}
    for t in types:
        ns[t.name] = os.stat(f"/proc/{pid}/ns/{t.proc}").st_ino
    return {"holder": {"pid": pid, "start": process.start_time(pid)},
            "parent": {"pid": parent, "start": process.start_time(parent)}, "ns": ns}


def _kill_holder(pid: int, parent: int) -> None:
    process.kill_and_reap(pid, parent)
    process.kill_and_reap(parent, parent)


def _start_native(name: str, types: Sequence[NsType]) -> dict:
    def inside_helper() -> dict:
        pid, parent = _start_in_bindable_order(types, lambda: _native_holder(name, types),
                                               _kill_holder)
        try:
            _bind_all(name, pid, types)
            return _holder_record(pid, parent, types)
        except BaseException:
            _kill_holder(pid, parent)
            raise
    return process.fork_call(inside_helper, f"start the holder of {name}", detached=True)


def _spawn_unshare(argv: list[str], types: Sequence[NsType], name: str) -> tuple[int, int]:
    """Run ``unshare ...`` in its own session; wait until its holder runs in the new
    namespaces with unshare's own binds made: (holder pid, unshare's pid)."""
    forks = any(t.name == "pid" for t in types)
    by_unshare = len(types) - len(bound_later(types))
    probe = types[0].proc
    null = os.open(os.devnull, os.O_RDWR)
    err = os.memfd_create("nsr-unshare-stderr", os.MFD_CLOEXEC)
    try:
        parent = os.posix_spawn(shutil.which(argv[0]) or argv[0], argv, dict(os.environ),
                                file_actions=[(os.POSIX_SPAWN_DUP2, null, 0),
                                              (os.POSIX_SPAWN_DUP2, null, 1),
                                              (os.POSIX_SPAWN_DUP2, err, 2)],
                                setsid=True)
    finally:
        os.close(null)

    def ready() -> int | None:
        if not process.pid_alive(parent):
            rc = process._wait(parent)
            os.lseek(err, 0, os.SEEK_SET)
            raise CommandError(argv, rc, os.read(err, 4096).decode(errors="replace"))
        pid = process.started_pid(parent, "sh" if forks else "sleep", forks)
        if pid is None or len(bound_inodes(name)) < by_unshare:
            return None
        try:
            new = os.stat(f"/proc/{pid}/ns/{probe}").st_ino != \
                os.stat(f"/proc/self/ns/{probe}").st_ino
        except OSError:
            return None
        return pid if new else None

    try:
        return process.wait_for(ready, 10, f"`{argv[0]}` to start the holder"), parent
    except BaseException:
        process.kill_and_reap(parent, parent)
        raise
    finally:
        os.close(err)


def _start_shell(name: str, argv: list[str], types: Sequence[NsType]) -> dict:
    def stop(_pid: int, parent: int) -> None:
        process.kill_and_reap(parent, parent)  # --kill-child: its holder goes with it
        _unbind_files(name)

    def inside_helper() -> dict:
        import subprocess
        pid, parent = _start_in_bindable_order(types, lambda: _spawn_unshare(argv, types, name),
                                               stop)
        try:
            for bind in bind_argvs(name, pid, bound_later(types)):
                done = subprocess.run(bind, capture_output=True, text=True)
                if done.returncode:
                    raise CommandError(bind, done.returncode, done.stderr)
            return _holder_record(pid, parent, types)
        except BaseException:
            process.kill_and_reap(parent, parent)
            raise
    return process.fork_call(inside_helper, f"start the holder of {name}", detached=True)


# --- the private mount under /run/nsrecipes and the netns link ------------------------------

def _mountinfo() -> list[list[str]]:
    with open("/proc/self/mountinfo") as f:
        return [ln.split() for ln in f]


def _is_mountpoint(path: str) -> bool:
    return any(fields[4] == path for fields in _mountinfo())


def _mounts_below(path: str) -> list[str]:
    prefix = path.rstrip("/") + "/"
    return [fields[4] for fields in _mountinfo() if fields[4].startswith(prefix)]


def _covering_mount(path: str) -> list[str] | None:
    """The mountinfo fields of the topmost mount on ``path`` (what covers the files in it)."""
    on = [fields for fields in _mountinfo() if fields[4] == path]
    below = {fields[1] for fields in on}
    top = [fields for fields in on if fields[0] not in below]
    return top[-1] if top else None


def _is_private_mount(path: str) -> bool:
    """True if ``path`` is a mount point whose top mount propagates nowhere (not shared)."""
    fields = _covering_mount(path)
    return fields is not None and not any(f.startswith("shared:")
                                          for f in fields[6:fields.index("-")])


@contextmanager
def _private_base(run: Runner) -> Iterator[None]:
    """Step: make /run/nsrecipes a private bind mount of itself, and keep it one while the
    block binds the namespace files on it.

    A mount-namespace file cannot be bound on a mount that propagates. The step runs under
    the exclusive lock on /run/nsrecipes; the block then holds a shared one, which the last
    removal's unmount (:func:`_release_private_base`) waits for. Downgrading an flock is not
    atomic, so the mount is checked again once the shared lock is held.
    """
    base = base_dir()
    argvs = [["mount", "--bind", base, base], ["mount", "--make-private", base]]

    def native() -> None:
        if not _is_mountpoint(base):
            sc.mount(base, base, None, sc.MS_BIND)
        sc.make_propagation(base, "private")

    def shell(_argv: list[str]) -> None:
        if not _is_mountpoint(base):
            nshell.run(argvs[0])
        nshell.run(argvs[1])

    step = Step(f"make {base} a private mount (a mount-namespace file cannot be bound on a "
                "shared one)", argv=argvs[0], native=native, shell=shell,
                display=" && ".join(" ".join(a) for a in argvs))
    if run.explain:
        run.run(step)
        yield
        return
    with _global_lock() as fd:
        for _ in range(10):
            run.run(step)
            fcntl.flock(fd, fcntl.LOCK_SH)
            if _is_private_mount(base):
                break
            fcntl.flock(fd, fcntl.LOCK_EX)  # unmounted in between: once more
        else:
            raise NsrError(f"{base} does not stay a private mount",
                           hint="see `findmnt -o+PROPAGATION` for what changes it")
        yield


def _release_private_base(run: Runner) -> None:
    """Step: unmount the private bind of /run/nsrecipes once no environment is left, and
    remove the empty directory (both under the lock, so no create is between its
    :func:`_private_base` and its binds, nor between its lock and its record)."""
    base = base_dir()
    if run.explain:
        run.run(Step(f"unmount {base} if no environment is left", argv=["umount", "-l", base]))
        return
    if not os.path.isdir(base):
        return
    with _global_lock():
        if _env_entries() or _mounts_below(base):
            return
        for _ in range(4):  # a bind made on a shared mount can be there twice
            if not _is_mountpoint(base):
                break
            # lazy: our own lock fd on the directory still pins the mount for a moment
            run.run(Step(f"no environment is left: unmount the private bind of {base}",
                         argv=["umount", "-l", base],
                         native=lambda: sc.umount(base, sc.MNT_DETACH)))
        state.prune(have_lock=True)


def _env_entries() -> list[str]:
    """Environment directories, also half-made ones (``.env-NAME.PID.tmp``)."""
    try:
        entries = os.listdir(base_dir())
    except OSError:
        return []
    return [e for e in entries if _TMP_RE.match(e) or
            (not e.startswith(".") and os.path.isfile(os.path.join(base_dir(), e, STATE_FILE))
             and read_state(e) is not None)]


def _attach_netns(run: Runner, name: str, pid: int | str) -> None:
    """Step: make the environment's netns visible to ``ip netns`` (``ip netns attach``)."""
    from nsutil import netlink as nl
    path = os.path.join(NETNS_DIR, name)

    def native() -> None:
        nl.ensure_run_dir()
        try:
            os.close(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0))
        except FileExistsError:
            raise Conflict(f"network namespace {name!r} exists already",
                           hint=f"it is not this environment's: remove it (ip netns del {name}) "
                                "or pick another name") from None
        try:
            sc.mount(f"/proc/{pid}/ns/net", path, None, sc.MS_BIND)
        except BaseException:
            os.unlink(path)
            raise

    def shell(argv: list[str]) -> None:
        # through a child that inherits our lock on the environment: if this tool is killed
        # while `ip` runs, a removal waits for `ip` instead of racing it and missing the name
        process.fork_call(lambda: nshell.run(argv), f"ip netns attach {name}", detached=True)

    run.run(Step(f"make its network namespace visible to `ip netns` as {name}",
                 argv=["ip", "netns", "attach", name, pid], native=native, shell=shell))


# --- create ---------------------------------------------------------------------------------

def _check_maps(spec: str | None) -> list[idmap.IdMap] | None:
    if spec is None or spec == "":
        return None
    if spec.strip().lower() == "none":
        return []
    return idmap.parse_map(spec)


def create(run: Runner, name: str, ns: str | Sequence[str] = DEFAULT_TYPES, *,
           hostname: str | None = None, domainname: str | None = None,
           uid_map: str | None = None, gid_map: str | None = None) -> dict:
    """Steps: create environment ``name`` with new namespaces of types ``ns`` and keep it.

    ``uid_map``/``gid_map`` (``"0:1000:1,..."``) apply when ``user`` is among the types;
    without them uid/gid 0 inside map to the caller's ids (``unshare --map-root-user``);
    ``gid_map`` defaults to the ranges of ``uid_map`` when that is given;
    ``"none"`` leaves the maps unwritten for a later :func:`set_idmap`. Everything is
    checked before anything is made; a failure half-way removes what was made.
    Returns the record (``env-ls`` shows it).
    """
    check_env_name(name)
    types = parse_types(ns)
    names_ = {t.name for t in types}
    if hostname is not None:
        check_hostname(hostname)
    if domainname is not None:
        check_hostname(domainname)
    if (hostname or domainname) and "uts" not in names_:
        raise InvalidInput("--hostname needs a UTS namespace", hint="add uts to --ns")
    umaps, gmaps = _check_maps(uid_map), _check_maps(gid_map)
    if (umaps or gmaps) and "user" not in names_:
        raise InvalidInput("--uid-map/--gid-map need a user namespace", hint="add user to --ns")
    if "user" in names_:
        if umaps is None:
            umaps = [idmap.IdMap(0, os.geteuid(), 1)]
        if gmaps is None:  # the same ranges as given for uids, else root's own gid
            gmaps = list(umaps) if uid_map else [idmap.IdMap(0, os.getegid(), 1)]
    if not run.explain:
        require_root("env-create")
        if read_state(name) is not None or os.path.lexists(env_dir(name)):
            raise Conflict(f"environment {name!r} exists already",
                           hint=f"remove it first (invoke env-rm {name}) or pick another name")
        if "net" in names_ and os.path.lexists(os.path.join(NETNS_DIR, name)):
            raise Conflict(f"network namespace {name!r} exists already (ip netns list)",
                           hint="pick another name: the environment's netns takes its name")

    run.heading(f"environment {name}: new {'+'.join(t.name.upper() for t in types)} namespaces")
    _record(run, name, types)
    try:
        argv = unshare_argv(name, types)
        later = bound_later(types)
        with _private_base(run):
            rec = run.run(Step(
                f"start the holder in new {sc.flag_names(flags_of(types))} namespaces, each "
                f"bound on {env_dir(name)}/TYPE" +
                ("; PID 1 there reaps orphans" if "pid" in names_ else ""),
                argv=argv, native=lambda: _start_native(name, types),
                display=None if not later else shlex.join(argv) + " &  " + "; ".join(
                    " ".join(b) for b in bind_argvs(name, "$!", later)),
                shell=lambda a: _start_shell(name, a, types),
                placeholder={"holder": {"pid": Placeholder("$PID"), "start": 0},
                             "parent": {"pid": Placeholder("$PID"), "start": 0}, "ns": {}}))
        if not run.explain:
            _update_state(name, lambda d: d.update(rec))
        holder = process.Holder(rec["holder"]["pid"], rec["parent"]["pid"], flags_of(types))
        if "user" in names_ and umaps:
            _write_maps(run, name, holder, umaps, gmaps or [])
        if hostname:
            _set_uts(run, name, holder, hostname=hostname)
        if domainname:
            _set_uts(run, name, holder, domainname=domainname)
        if "net" in names_:
            if not run.explain:
                _update_state(name, lambda d: d.update(netns=name))
            _attach_netns(run, name, holder.pid)
        if not run.explain:
            done = _update_state(name, lambda d: d.update(status="ready"))
        else:
            done = {"name": name, "types": [t.name for t in types]}
        run.say(f"environment {name} is ready: holder pid {holder.pid}; enter it with "
                f"`invoke env-exec {name} -- CMD`")
        return done
    finally:
        _release(name)


def _record(run: Runner, name: str, types: Sequence[NsType]) -> None:
    """Step: the record directory with one empty file per namespace to bind on; undo: remove."""
    base = base_dir()
    files = [ns_file(name, t) for t in types]

    def make(_argv: list[str] | None = None) -> None:
        state.state_dir()
        with _global_lock():
            if os.path.lexists(env_dir(name)):
                raise Conflict(f"environment {name!r} exists already",
                               hint=f"remove it first (invoke env-rm {name}) or pick another name")
            tmp = os.path.join(base, f".env-{name}.{os.getpid()}.tmp")
            try:
                os.mkdir(tmp, 0o700)
                fd = _open_dir(tmp)
                fcntl.flock(fd, fcntl.LOCK_EX)   # the lock moves with the directory
                _HELD[name] = fd
                for t in types:
                    os.close(os.open(os.path.join(tmp, t.name),
                                     os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0o400))
                me = {"pid": os.getpid(), "start": process.start_time(os.getpid())}
                state.atomic_write_json(os.path.join(tmp, STATE_FILE), {
                    "kind": KIND, "version": 1, "name": name, "status": "creating",
                    "types": [t.name for t in types], "backend": run.backend,
                    "created": time.time(), "creator": me, "holder": None, "parent": None,
                    "ns": {}, "netns": None, "hostname": None, "domainname": None,
                    "uid_map": None, "gid_map": None, "veths": [], "links": [], "mounts": [],
                    "queues": []})
                os.rename(tmp, env_dir(name))
            except OSError as exc:
                shutil.rmtree(tmp, ignore_errors=True)
                _release(name)
                raise SyscallError.from_oserror(f"record {env_dir(name)!r}", exc) from None

    def undo(_argv: list[str] | None = None) -> None:
        remove(Runner(backend=run.backend, out=run.out), name, missing_ok=True)

    run.run(Step(f"record it in {env_dir(name)} (0700), with a file per namespace to bind on",
                 argv=["mkdir", "-m", "0700", env_dir(name)], native=make, shell=make,
                 display=f"mkdir -m 0700 {env_dir(name)} && touch {' '.join(files)}",
                 undo=Step(f"remove environment {name}", display=f"invoke env-rm {name}",
                           native=undo, shell=undo)))


def _release(name: str) -> None:
    fd = _HELD.pop(name, None)
    if fd is not None:
        os.close(fd)


# --- steps on an existing environment -------------------------------------------------------

def _load(name: str, run: Runner | None = None, *, need: str | None = None,
          alive: bool = True) -> dict:
    """The record of a live environment, checked for having the namespace ``need``."""
    check_env_name(name)
    if run is not None and run.explain:  # the real types when the record can be read
        try:
            types = (read_state(name) or {}).get("types") or list(NS_TYPES)
        except OSError:
            types = list(NS_TYPES)
        return {"name": name, "types": types, "holder": {"pid": Placeholder("$PID")},
                "parent": {"pid": Placeholder("$PID")}, "ns": {}, "veths": [], "links": []}
    require_root(f"environment {name}")
    st = read_state(name)
    if st is None:
        raise NotFound(f"environment {name!r} does not exist",
                       hint="see `invoke env-ls` for the environments there are")
    if need and need not in st["types"]:
        raise InvalidInput(f"environment {name!r} has no {need} namespace (it has "
                           f"{','.join(st['types'])})",
                           hint=f"create one with --ns including {need}")
    if alive and not holder_alive(st):
        raise NsrError(f"environment {name!r} is dead: its holder (pid "
                       f"{(st.get('holder') or {}).get('pid')}) is gone",
                       hint=f"remove it with `invoke env-rm {name}` and create it again")
    return st


def _set_uts(run: Runner, name: str, holder: process.Holder, *, hostname: str | None = None,
             domainname: str | None = None) -> None:
    from . import uts
    if hostname is not None:
        uts.set_hostname(run, holder, hostname)
    if domainname is not None:
        uts.set_domainname(run, holder, domainname)
    if not run.explain:
        _update_state(name, lambda d: d.update({k: v for k, v in (("hostname", hostname),
                                                               ("domainname", domainname)) if v}))


def set_hostname(run: Runner, name: str, hostname: str | None = None,
                 domainname: str | None = None) -> None:
    """Step: set the hostname (and/or NIS domain name) inside the environment."""
    if hostname is None and domainname is None:
        raise InvalidInput("nothing to set", hint="give --hostname and/or --domainname")
    for value in (hostname, domainname):
        if value is not None:
            check_hostname(value)
    st = _load(name, run, need="uts")
    with _lock_unless_explain(run, name):
        _set_uts(run, name, _holder(st), hostname=hostname, domainname=domainname)


@contextmanager
def _lock_unless_explain(run: Runner, *names_: str) -> Iterator[None]:
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
    with _env_lock(names_[0]):
        with _nested_locks(names_[1:]):
            yield


def _write_maps(run: Runner, name: str, holder: process.Holder, umaps: list[idmap.IdMap],
                gmaps: list[idmap.IdMap]) -> None:
    from . import user
    user.write_uid_map(run, holder, umaps)
    if gmaps:
        user.write_gid_map(run, holder, gmaps)
    if not run.explain:
        _update_state(name, lambda d: d.update(
            uid_map=",".join(m.line().replace(" ", ":") for m in umaps),
            gid_map=",".join(m.line().replace(" ", ":") for m in gmaps) or None))


def set_idmap(run: Runner, name: str, uid_map: str, gid_map: str | None = None) -> None:
    """Steps: write the uid_map (and gid_map, default: the same ranges) of the environment's
    user namespace. Each map can be written once (user_namespaces(7))."""
    umaps = idmap.parse_map(uid_map)
    gmaps = idmap.parse_map(gid_map) if gid_map else list(umaps)
    st = _load(name, run, need="user")
    if not run.explain:
        pid = st["holder"]["pid"]
        for which in ("uid", "gid"):
            if idmap.read_map(pid, which):
                raise Conflict(f"the {which}_map of environment {name!r} is written already",
                               hint="each map can be written once: create the environment "
                                    "with --uid-map none to set the maps later")
    with _lock_unless_explain(run, name):
        _write_maps(run, name, _holder(st), umaps, gmaps)


def _links_in(ns: str) -> set[str]:
    """Names of the links in netns ``ns`` (``ip -n NS link``)."""
    from nsutil import netlink as nl
    return {item["name"] for item in nl.links(ns)}


def _default_ifname(used: set[str]) -> str:
    n = 0
    while f"eth{n}" in used:
        n += 1
    return f"eth{n}"


def add_veth(run: Runner, name: str, peer: str | None = None, *, ifname: str | None = None,
             peer_ifname: str | None = None, addr: str | None = None,
             peer_addr: str | None = None) -> dict:
    """Steps: a veth pair from the environment to the host (``peer=None``) or to another
    environment, both ends created in place, addressed and up (``recipes.net.add_veth_pair``).

    The host end must carry the ``nsr`` prefix (default: ``nsr-v-XXXX``); an end inside an
    environment defaults to the first free ``ethN``. Returns what was made.
    """
    from . import net
    if peer in ("host", "root", ""):
        peer = None
    if peer is not None:
        check_env_name(peer)
        if peer == name:
            raise InvalidInput("a veth from an environment to itself", hint="give another --peer")
    for value in (ifname, peer_ifname):
        if value is not None:
            check_ifname(value)
    if peer is None and peer_ifname is not None and not is_ours(peer_ifname):
        raise InvalidInput(f"the host end {peer_ifname!r} does not start with 'nsr'",
                           hint="name it nsr-...: links nsrecipes makes on the host carry "
                                "the prefix, so cleanup can find them")
    for value, what in ((addr, "address"), (peer_addr, "peer address")):
        if value:
            net.check_addr(value, what)
    _load(name, run, need="net")
    if peer:
        _load(peer, run, need="net")
    here = set() if run.explain else _links_in(name)
    there = set() if run.explain or peer is None else _links_in(peer)
    ifname = ifname or _default_ifname(here)
    if peer is None:
        peer_ifname = peer_ifname or prefixed("v", scope_id())
        if not run.explain and os.path.exists(f"/sys/class/net/{peer_ifname}"):
            raise Conflict(f"link {peer_ifname!r} exists on the host already",
                           hint="give another --peer-ifname")
    else:
        peer_ifname = peer_ifname or _default_ifname(there)
        if peer_ifname in there:
            raise Conflict(f"environment {peer!r} has a link {peer_ifname!r} already",
                           hint="give another --peer-ifname")
    if ifname in here:
        raise Conflict(f"environment {name!r} has a link {ifname!r} already",
                       hint="give another --ifname")
    with _lock_unless_explain(run, name, *( [peer] if peer else [])):
        if peer is None:
            # made from the host's side (``ip link add HOST type veth peer name IF netns
            # NAME``): the end in our own namespace needs no namespace file to be opened
            net.add_veth_pair(run, peer_ifname, ifname, ns=None, peer_ns=name, addr=peer_addr,
                              peer_addr=addr)
        else:
            net.add_veth_pair(run, ifname, peer_ifname, ns=name, peer_ns=peer, addr=addr,
                              peer_addr=peer_addr)
        made = {"ifname": ifname, "peer": peer or "host", "peer_ifname": peer_ifname,
                "addr": addr, "peer_addr": peer_addr}
        if not run.explain:
            def mine(d: dict) -> None:
                d.setdefault("veths", []).append(dict(made, here=True))
                if peer is None:
                    d.setdefault("links", []).append(peer_ifname)
            _update_state(name, mine)
            if peer:
                _update_state(peer, lambda d: d.setdefault("veths", []).append(
                    {"ifname": ifname, "peer": name, "peer_ifname": peer_ifname, "addr": addr,
                     "peer_addr": peer_addr, "here": False}))
    return made


_SIZE_RE = re.compile(r"^[0-9]+[kKmMgG%]?$")


def _check_target(path: str, what: str = "target") -> str:
    if not path or not path.startswith("/") or "\0" in path:
        raise InvalidInput(f"mount {what} {path!r} is not an absolute path",
                           hint="give a path like /mnt/data (it must exist inside)")
    norm = os.path.normpath(path)
    if norm == "/":
        raise InvalidInput(f"mount {what} '/' is not allowed", hint="mount on a directory below /")
    return norm


def mount_tmpfs(run: Runner, name: str, target: str, size: str | None = None) -> None:
    """Step: mount a tmpfs on ``target`` inside the environment's mount namespace only."""
    target = _check_target(target)
    if size is not None and not _SIZE_RE.match(size):
        raise InvalidInput(f"tmpfs size {size!r} is not like 64m", hint="use e.g. 16m, 1g or 50%")
    st = _load(name, run, need="mnt")
    holder = _holder(st)
    opts = f"size={size}" if size else None
    argv = ["mount", "-t", "tmpfs"] + (["-o", opts] if opts else []) + ["tmpfs", target]
    _mount_inside(run, name, holder, argv, f"mount a tmpfs on {target} inside {name}",
                  lambda: sc.mount("tmpfs", target, "tmpfs", 0, opts),
                  {"type": "tmpfs", "target": target, "size": size})


def bind_mount(run: Runner, name: str, source: str, target: str, readonly: bool = False) -> None:
    """Step: bind-mount ``source`` on ``target`` inside the environment (both paths as seen
    there); ``readonly`` makes the bind read-only."""
    source = _check_target(source, "source")
    target = _check_target(target)
    st = _load(name, run, need="mnt")
    holder = _holder(st)
    argv = ["mount", "--bind"] + (["-o", "ro"] if readonly else []) + [source, target]

    def native() -> None:
        sc.mount(source, target, None, sc.MS_BIND)
        if readonly:
            sc.mount(None, target, None, sc.MS_REMOUNT | sc.MS_BIND | sc.MS_RDONLY)
    _mount_inside(run, name, holder, argv, f"bind {source} on {target} inside {name}"
                  + (" read-only" if readonly else ""), native,
                  {"type": "bind", "source": source, "target": target, "readonly": readonly})


def _mount_inside(run: Runner, name: str, holder: process.Holder, argv: list[str], title: str,
                  fn: Callable[[], None], rec: dict) -> None:
    from .common import enter_argv
    types = join_types(holder, "mnt")
    with _lock_unless_explain(run, name):
        run.run(Step(title, argv=enter_argv(holder, "mnt", argv),
                     native=lambda: process.call_in(holder.pid, types, fn)))
        if not run.explain:
            _update_state(name, lambda d: d.setdefault("mounts", []).append(rec))


def make_queue(run: Runner, name: str) -> int:
    """Step: make a System V message queue inside the environment's IPC namespace
    (``ipcmk -Q``); returns its id there."""
    from . import ipc
    st = _load(name, run, need="ipc")
    with _lock_unless_explain(run, name):
        qid = ipc.make_queue_inside(run, _holder(st))
        if not run.explain:
            _update_state(name, lambda d: d.setdefault("queues", []).append(qid))
    return qid


# --- running commands inside ----------------------------------------------------------------

def nsenter_argv(st: dict, argv: Sequence[str], cwd: str | None = None) -> list[str]:
    """``nsenter -t PID --user ... --mount --root --wd -- argv`` (all the environment's types)."""
    types = parse_types(st["types"])
    return (["nsenter", "-t", st["holder"]["pid"]] + [t.option for t in types] +
            ["--root", f"--wd={cwd}" if cwd else "--wd", "--"] + list(argv))


def _native_exec(pid: int, types: list[NsType], argv: list[str], *, capture: bool,
                 input: bytes | None, cwd: str | None) -> process.Completed:
    import subprocess

    def child() -> process.Completed:
        root = os.open(f"/proc/{pid}/root", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        wd = os.open(f"/proc/{pid}/cwd", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        process.enter_all(pid, types)  # user first, as nsenter; uid/gid 0 in a user ns
        os.fchdir(root)
        os.chroot(".")
        try:
            if cwd:
                os.chdir(cwd)
            else:
                os.fchdir(wd)
        except OSError as exc:
            raise SyscallError.from_oserror(f"chdir({cwd!r}) inside", exc) from None
        os.close(root)
        os.close(wd)
        try:
            proc = subprocess.run(argv, input=input, preexec_fn=_default_signals,
                                  stdout=subprocess.PIPE if capture else None,
                                  stderr=subprocess.PIPE if capture else None)
        except FileNotFoundError:
            return process.Completed(argv, 127, "", f"{argv[0]}: command not found inside\n")
        except PermissionError:
            return process.Completed(argv, 126, "", f"{argv[0]}: permission denied\n")
        return process.Completed(argv, proc.returncode,
                                 (proc.stdout or b"").decode(errors="replace"),
                                 (proc.stderr or b"").decode(errors="replace"))
    done = process.fork_call(child, f"enter {pid}")
    if done.returncode < 0:
        done.returncode = 128 - done.returncode
    return done


def _default_signals() -> None:
    for sig in (signal.SIGINT, signal.SIGQUIT):
        signal.signal(sig, signal.SIG_DFL)


def _shell_exec(argv: list[str], *, capture: bool, input: bytes | None) -> process.Completed:
    if capture:
        return nshell.run_full(argv, input=input)
    import subprocess
    if shutil.which(argv[0]) is None:
        from nsutil.errors import ToolMissing
        raise ToolMissing(argv[0], process.package_for(argv[0]))
    with process.deferred_sigint():  # the command gets Ctrl-C itself; we raise after it
        proc = subprocess.run(argv, input=input, preexec_fn=_default_signals)
    rc = proc.returncode if proc.returncode >= 0 else 128 - proc.returncode
    return process.Completed(argv, rc, "")


@contextmanager
def _ignoring_interrupts(active: bool) -> Iterator[None]:
    """While a foreground command runs, Ctrl-C is for it, not for us (as a shell does)."""
    if not active:
        yield
        return
    old = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGQUIT)}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def exec_in(run: Runner, name: str, argv: Sequence[str] | None = None, *, capture: bool = True,
            input: str | bytes | None = None, cwd: str | None = None) -> process.Completed:
    """Step: run ``argv`` in all of the environment's namespaces (user first), with its root
    and working directory (``cwd`` overrides the latter); returns exit code and output.

    With ``capture=False`` the command uses this process's terminal (an interactive shell
    gets it); no ``argv`` runs ``$SHELL`` (or /bin/sh) that way.
    """
    if not argv:
        argv = [os.environ.get("SHELL") or "/bin/sh"]
        capture = False
    argv = [str(a) for a in argv]
    if cwd is not None:
        cwd = _check_target(cwd, "working directory") if cwd != "/" else "/"
    data = input.encode() if isinstance(input, str) else input
    st = _load(name, run)
    types = parse_types(st["types"])
    full = nsenter_argv(st, argv, cwd)
    with _ignoring_interrupts(not capture and not run.explain):
        return run.run(Step(
            f"run {' '.join(argv)!r} inside {name}", argv=full,
            native=lambda: _native_exec(st["holder"]["pid"], types, argv, capture=capture,
                                        input=data, cwd=cwd),
            shell=lambda a: _shell_exec(a, capture=capture, input=data),
            placeholder=process.Completed(full, 0, "")))


# --- listing --------------------------------------------------------------------------------

def describe(name: str, table: dict[int, dict[str, int]] | None = None) -> dict:
    """What ``env-ls`` shows for one environment."""
    st = read_state(name) or {"name": name, "types": [], "status": "broken"}
    bound = bound_inodes(name)
    alive = holder_alive(st)
    members = _members(bound, table)
    if st.get("status") == "creating":
        creator = st.get("creator")
        status = "creating" if _same_process(creator) or alive else "broken"
    else:
        status = "alive" if alive else "dead"
    created = st.get("created")
    return {
        "name": name, "pid": (st.get("holder") or {}).get("pid"), "state": status,
        "ns": {t: bound.get(t) for t in st.get("types", [])},
        "nprocs": len(members), "pids": members,
        "created": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(created)) if created else None,
        "netns": st.get("netns"), "hostname": st.get("hostname"),
        "veths": st.get("veths", []), "mounts": st.get("mounts", []),
        "queues": st.get("queues", []), "uid_map": st.get("uid_map"),
        "gid_map": st.get("gid_map"), "backend": st.get("backend"),
    }


def list_envs() -> list[dict]:
    """Every environment, as :func:`describe` shows it (one pass over /proc for all)."""
    require_root("env-ls")
    found = names()
    table = _proc_table() if found else {}
    return [describe(n, table) for n in found]


def format_table(rows: list[dict]) -> str:
    """A table like ``lsns``: NAME PID STATE NPROCS CREATED NAMESPACES."""
    head = f"{'NAME':<20} {'PID':>7} {'STATE':<8} {'NPROCS':>6} {'CREATED':<19} NAMESPACES"
    lines = [head]
    for r in rows:
        ns = " ".join(f"{t}:{ino if ino else '-'}" for t, ino in r["ns"].items())
        lines.append(f"{r['name']:<20} {str(r['pid'] or '-'):>7} {r['state']:<8} "
                     f"{r['nprocs']:>6} {r['created'] or '-':<19} {ns}")
    return "\n".join(lines)


def format_json(rows: list[dict]) -> str:
    """``{"environments": [...]}``, like ``lsns --json``."""
    return json.dumps({"environments": rows}, indent=2)


# --- remove ---------------------------------------------------------------------------------

def remove(run: Runner, name: str, *, missing_ok: bool = False) -> dict:
    """Steps: kill the environment's processes, delete its host links, unbind its netns and
    namespace files, remove its record; unmount /run/nsrecipes when it was the last one.

    Works on half-made and dead environments (holder killed, tool killed mid-create).
    Returns what was removed; a missing environment raises :class:`NotFound` unless
    ``missing_ok``.
    """
    check_env_name(name)
    if run.explain:
        _remove_steps_explain(run, name)
        return {}
    require_root("env-rm")
    try:
        with _env_lock(name):
            st = read_state(name)
            if st is None and not os.path.isdir(env_dir(name)):
                raise NotFound(f"environment {name!r} does not exist",
                               hint="already removed? see `invoke env-ls`")
            done = _remove_locked(run, name, env_dir(name), st or {})
    except NotFound:
        if missing_ok:
            return {}
        raise
    _release_private_base(run)
    return done


def _remove_steps_explain(run: Runner, name: str) -> None:
    pids, link, t = Placeholder("$PIDS"), Placeholder("$IF"), Placeholder("$TYPE")
    run.run(Step(f"kill every process in {name}'s namespaces", argv=["kill", "-KILL", pids]))
    run.run(Step("delete its ends of its veths (their peers go with them)",
                 argv=["ip", "-n", name, "link", "del", "dev", link]))
    run.run(Step("remove its `ip netns` name", argv=["ip", "netns", "delete", name]))
    run.run(Step("unbind its namespace files",
                 argv=["umount", "-l", Placeholder(f"{env_dir(name)}/{t}")]))
    run.run(Step("remove its record", argv=["rm", "-r", env_dir(name)]))
    _release_private_base(run)


def _remove_locked(run: Runner, name: str, path: str, st: dict) -> dict:
    bound = {}
    for t in NS_TYPES:
        try:
            s = os.stat(os.path.join(path, t))
        except OSError:
            continue
        if s.st_dev == _NSFS_DEV:
            bound[t] = s.st_ino
    _kill_members(run, name, st, bound)
    links = _delete_veths(run, name, st, bound)
    links += _delete_host_links(run, st, bound)
    netns = _detach_netns(run, name, st, bound)
    _unbind(run, path, bound)
    _remove_record(run, path)
    return {"name": name, "links": links, "netns": netns, "ns": bound}


def _kill_members(run: Runner, name: str, st: dict, bound: dict[str, int]) -> None:
    pids = {int(st[k]["pid"]) for k in ("holder", "parent") if _same_process(st.get(k))}
    if not pids or "pid" not in bound:
        # with a live PID 1 everything in its PID namespace dies with it; else look
        pids |= set(_members(bound))
    if not pids:
        return

    def kill(_argv: list[str] | None = None) -> None:
        for pid in sorted(pids):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def shell(argv: list[str]) -> None:
        nshell.run_full(argv)  # a process may be gone already: that is fine

    run.run(Step(f"kill the processes of {name} ({len(pids)}: {', '.join(map(str, sorted(pids)))})",
                 argv=["kill", "-KILL", *sorted(pids)], native=kill, shell=shell))

    victims = set(pids)

    def gone() -> bool:
        left = [p for p in victims if process.pid_alive(p)]
        if not left:  # and nothing new was forked into the namespaces meanwhile
            left = [p for p in _members(bound) if process.pid_alive(p)]
            victims.update(left)
        for p in left:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return not left
    process.wait_for(gone, 10, f"the processes of {name} to exit")


def _delete_host_links(run: Runner, st: dict, bound: dict[str, int]) -> list[str]:
    done = []
    for link in st.get("links", []):
        if not is_ours(link) or not os.path.exists(f"/sys/class/net/{link}"):
            continue
        if not _is_veth(link):
            continue

        def native(n: str = link) -> None:
            from . import net
            net.remove_root_link(n)

        def shell(argv: list[str]) -> None:
            done_ = nshell.run_full(argv)
            if done_.returncode and os.path.exists(f"/sys/class/net/{argv[-1]}"):
                done_.check()
        run.run(Step(f"delete its host link {link} (the peer inside goes with it)",
                     argv=["ip", "link", "del", "dev", link], native=native, shell=shell))
        done.append(link)
    return done


def _own_netns(name: str, bound: dict[str, int]) -> bool:
    """True if /run/netns/NAME is this environment's network namespace."""
    try:
        s = os.stat(os.path.join(NETNS_DIR, name))
    except OSError:
        return False
    return "net" in bound and s.st_dev == _NSFS_DEV and s.st_ino == bound["net"]


def _del_link_in(ns: str, ifname: str) -> None:
    """``ip -n NS link del IFNAME``, natively; a link already gone is fine."""
    from nsutil import netlink as nl
    try:
        with nl.Rtnl(nl.rtnl_socket(ns)) as r:
            r.del_link(nl.link_body(ifname), f"ip -n {ns} link del dev {ifname}")
            r.flush()
    except SyscallError as exc:
        if exc.errno_name != "ENODEV":
            raise


def _delete_veths(run: Runner, name: str, st: dict, bound: dict[str, int]) -> list[str]:
    """Delete the environment's ends of its veths now, so their peers (on the host or in
    another environment) go at once instead of when the kernel frees the namespace."""
    if not _own_netns(name, bound):
        return []
    done = []
    for v in st.get("veths", []):
        local = v["ifname"] if v.get("here", True) else v["peer_ifname"]

        def shell(argv: list[str]) -> None:
            nshell.run_full(argv)  # gone already (its peer's environment was removed): fine
        run.run(Step(f"delete {local} in {name} (its peer goes with it)",
                     argv=["ip", "-n", name, "link", "del", "dev", local],
                     native=lambda n=local: _del_link_in(name, n), shell=shell))
        done.append(f"{name}:{local}")
    return done


def _is_veth(link: str) -> bool:
    """A veth's iflink is its peer's index (another namespace's, possibly), not its own."""
    try:
        with open(f"/sys/class/net/{link}/ifindex") as f, open(f"/sys/class/net/{link}/iflink") as g:
            return f.read().strip() != g.read().strip()
    except OSError:
        return False


def _detach_netns(run: Runner, name: str, st: dict, bound: dict[str, int]) -> str | None:
    path = os.path.join(NETNS_DIR, name)
    try:
        s = os.stat(path)
    except OSError:
        return None
    if s.st_dev != _NSFS_DEV:
        # an empty file: ``ip netns attach`` killed between creating and binding it
        if st.get("netns") != name or not stat_is_empty_file(s):
            return None

        def unlink() -> None:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        run.run(Step(f"remove the half-made `ip netns` name {name}", argv=["rm", "-f", path],
                     native=unlink))
        return name
    if "net" not in bound or s.st_ino != bound["net"]:
        return None  # not this environment's netns: leave it

    def native() -> None:
        from nsutil import netlink as nl
        nl.delete_netns(name)
    run.run(Step(f"remove the `ip netns` name {name}", argv=["ip", "netns", "delete", name],
                 native=native))
    return name


def stat_is_empty_file(s: os.stat_result) -> bool:
    """A regular empty file (what ``ip netns add`` creates before binding on it)."""
    import stat as st_
    return st_.S_ISREG(s.st_mode) and s.st_size == 0


def _unbind(run: Runner, path: str, bound: dict[str, int]) -> None:
    for t in sorted(bound, key=lambda k: list(NS_TYPES).index(k)):
        f = os.path.join(path, t)

        def native(f: str = f) -> None:
            try:
                sc.umount(f, sc.MNT_DETACH)
            except SyscallError as exc:
                if exc.errno != _errno.EINVAL:  # EINVAL: not mounted any more
                    raise
        run.run(Step(f"unbind {f} (the namespace goes once nothing uses it)",
                     argv=["umount", "-l", f], native=native))


def _remove_record(run: Runner, path: str) -> None:
    def native(_argv: list[str] | None = None) -> None:
        if _mounts_below(path):
            raise NsrError(f"{path} still has mounts below it: {', '.join(_mounts_below(path))}",
                           hint="unmount them (umount -l) and run env-rm again")
        sc.remove_if_present(path, shutil.rmtree, f"rm -r {path!r}")
    run.run(Step(f"remove its record {path}", argv=["rm", "-r", path], native=native,
                 shell=lambda a: (_mounts_below(path) and native()) or nshell.run(a)))


# --- cleanup --------------------------------------------------------------------------------

def _remove_tmp(entry: str) -> None:
    """Remove a half-made ``.env-NAME.PID.tmp`` record whose creator is gone."""
    path = os.path.join(base_dir(), entry)
    fd = _open_dir(path) if os.path.isdir(path) else None
    if fd is None:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        run = _quiet_runner()
        st = state.read_json(os.path.join(path, STATE_FILE)) or {}
        _remove_locked(run, entry, path, st if isinstance(st, dict) else {})
    finally:
        os.close(fd)
    _release_private_base(_quiet_runner())


def leftovers() -> list[Leftover]:
    """Every environment (alive, dead or half-made) and the private bind of /run/nsrecipes;
    each ``remove()`` removes exactly that one (see :func:`remove`)."""
    found: list[Leftover] = []
    base = base_dir()
    if not os.path.isdir(base):
        return found
    for entry in sorted(os.listdir(base)):
        m = _TMP_RE.match(entry)
        if m:
            if not process.pid_alive(int(m.group(2))):
                found.append(Leftover("env", f"{m.group(1)} (half-made: {entry})",
                                      lambda e=entry: _remove_tmp(e)))
            continue
        if entry.startswith(".") or read_state(entry) is None:
            continue
        found.append(Leftover("env", entry, lambda n=entry: _remove_quietly(n)))
    if not found and _is_mountpoint(base) and not _mounts_below(base):
        found.append(Leftover("mount", f"{base} (private bind)",
                              lambda: _release_private_base(_quiet_runner())))
    return found


def _quiet_runner(backend: str | None = "native") -> Runner:
    return Runner(backend=backend, keep=True, out=_devnull())


def _devnull():
    global _DEVNULL
    if _DEVNULL is None:
        _DEVNULL = open(os.devnull, "w")
    return _DEVNULL


_DEVNULL = None


def _remove_quietly(name: str) -> None:
    remove(_quiet_runner(), name, missing_ok=True)


# --- the Python API -------------------------------------------------------------------------

class Environment:
    """A named environment kept by a holder; the steps are methods.

    ::

        with Environment.create("nsr-web", "uts,ipc,pid,mnt,net", hostname="web") as web:
            web.add_veth(addr="10.0.0.1/24", peer_addr="10.0.0.2/24")
            print(web.exec(["hostname"]).stdout)
        # removed here

    ``backend`` is ``auto``, ``shell`` or ``native`` (as ``--backend``).
    """

    def __init__(self, name: str, *, backend: str | None = None, run: Runner | None = None):
        self.name = check_env_name(name)
        self.run = run or Runner(backend=backend, keep=True, out=_devnull())

    @classmethod
    def create(cls, name: str, ns: str | Sequence[str] = DEFAULT_TYPES, *,
               hostname: str | None = None, domainname: str | None = None,
               uid_map: str | None = None, gid_map: str | None = None,
               backend: str | None = None, run: Runner | None = None) -> "Environment":
        """Create the environment (see :func:`create`) and return it."""
        env = cls(name, backend=backend, run=run)
        with Runner(backend=env.run.backend, keep=True, out=env.run.out) as r:
            create(r, name, ns, hostname=hostname, domainname=domainname, uid_map=uid_map,
                   gid_map=gid_map)
        return env

    @classmethod
    def open(cls, name: str, *, backend: str | None = None) -> "Environment":
        """An existing environment (raises :class:`NotFound` when there is none)."""
        env = cls(name, backend=backend)
        if read_state(name) is None:
            raise NotFound(f"environment {name!r} does not exist", hint="see `invoke env-ls`")
        return env

    # -- what it is ---------------------------------------------------------------------
    @property
    def state(self) -> dict:
        """The record as stored now."""
        st = read_state(self.name)
        if st is None:
            raise NotFound(f"environment {self.name!r} does not exist", hint="see `invoke env-ls`")
        return st

    @property
    def pid(self) -> int:
        """Host pid of the holder (``nsenter -t PID``)."""
        return int(self.state["holder"]["pid"])

    @property
    def types(self) -> list[str]:
        """Its namespace types."""
        return list(self.state["types"])

    def alive(self) -> bool:
        """True while its holder runs."""
        st = read_state(self.name)
        return bool(st) and holder_alive(st)

    def info(self) -> dict:
        """What ``env-ls`` shows for it."""
        return describe(self.name)

    def processes(self) -> list[int]:
        """Host pids of its processes."""
        return processes(self.name)

    # -- steps --------------------------------------------------------------------------
    def _step(self, fn: Callable, *args: Any, **kw: Any) -> Any:
        with Runner(backend=self.run.backend, keep=True, out=self.run.out) as r:
            return fn(r, self.name, *args, **kw)

    def set_hostname(self, hostname: str | None = None, domainname: str | None = None) -> None:
        """Set its hostname and/or NIS domain name."""
        self._step(set_hostname, hostname, domainname)

    def set_idmap(self, uid_map: str, gid_map: str | None = None) -> None:
        """Write its uid/gid maps (once)."""
        self._step(set_idmap, uid_map, gid_map)

    def add_veth(self, peer: "Environment | str | None" = None, **kw: Any) -> dict:
        """A veth to the host (``peer=None``) or to another environment; see :func:`add_veth`."""
        other = peer.name if isinstance(peer, Environment) else peer
        return self._step(add_veth, other, **kw)

    def mount_tmpfs(self, target: str, size: str | None = None) -> None:
        """A tmpfs on ``target`` inside."""
        self._step(mount_tmpfs, target, size)

    def bind_mount(self, source: str, target: str, readonly: bool = False) -> None:
        """Bind ``source`` on ``target`` inside."""
        self._step(bind_mount, source, target, readonly)

    def make_queue(self) -> int:
        """A System V message queue inside; returns its id."""
        return self._step(make_queue)

    def exec(self, argv: Sequence[str] | None = None, *, capture: bool = True,
             input: str | bytes | None = None, cwd: str | None = None,
             check: bool = False) -> process.Completed:
        """Run a command inside; ``check`` raises on a non-zero exit."""
        done = self._step(exec_in, argv, capture=capture, input=input, cwd=cwd)
        return done.check() if check else done

    def remove(self, missing_ok: bool = False) -> dict:
        """Remove it (processes, links, binds, record)."""
        return self._step(remove, missing_ok=missing_ok)

    def __enter__(self) -> "Environment":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.remove(missing_ok=True)

    def __repr__(self) -> str:
        return f"Environment({self.name!r})"


__all__ = ["Environment", "add_veth", "bind_mount", "create", "describe", "exec_in",
           "format_json", "format_table", "leftovers", "list_envs", "make_queue",
           "mount_tmpfs", "names", "processes", "read_state", "remove", "set_hostname",
           "set_idmap"]
