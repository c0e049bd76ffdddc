"""Environments: the holder process and the binds that keep the namespaces alive.

How an environment is kept, the way util-linux does it:

* a **holder** process is started in the new namespaces (``unshare --TYPE=FILE ... --fork``);
  with a PID namespace it is PID 1 there and reaps orphans (the shell form runs a tiny
  ``wait`` loop as PID 1, the native one :func:`nsutil.process.reap_forever`);
* each namespace is **bind-mounted** on ``/run/nsrecipes/NAME/TYPE`` (``unshare
  --uts=/run/nsrecipes/NAME/uts`` does exactly that), so it lives as long as the bind even if
  every process in it dies. A mount-namespace file can only be bound on a mount that is not
  shared, so ``/run/nsrecipes`` is made a private bind mount of itself while environments
  exist, and unmounted again when the last one is removed (:func:`private_base`). The
  kernel also binds one only if its id is greater than the binder's own namespace's
  (``mnt_ns_loop``); from 6.18 ids come from per-CPU batches, so the mount namespace's file
  is bound by us once the holder runs, after checking that (a holder on the wrong CPU is
  made again on another one: :func:`_start_in_bindable_order`).

Without root a user namespace owns every other namespace of the environment: the one all of
the user's environments share (``nsenter -t USERNS --user --preserve-credentials -- unshare
...``, natively setns to it and unshare the rest; :mod:`recipes.env.userns`), or, with id
maps of its own, a new one (``unshare --user ...``; natively the forked holder unshares them
all and its parent writes its maps). Nothing is bound on the host (a user cannot mount
there), so the holder alone keeps them (see :mod:`recipes.env.state`), and the state
directory is the user's own (``$XDG_RUNTIME_DIR/nsrecipes``), never made a mount.

The holder is started by a helper process (:func:`nsutil.process.fork_call`) that inherits
the environment's lock, so a removal running after this tool was SIGKILLed waits for it.
"""
from __future__ import annotations

import fcntl
import os
import shlex
from contextlib import contextmanager
from typing import Callable, Iterator, Sequence

from nsutil import mountinfo, process, programs, state
from nsutil import procfs
from nsutil import shell as nshell
from nsutil import syscalls as sc
from nsutil.backend import Placeholder, Runner, Step
from nsutil.errors import CommandError, NsrError
from nsutil.nstypes import NS_TYPES, NsType, flags_of, mntns_id, needs_fork
from nsutil.rootless import UNSHARE_OPTIONS, outside_gid, outside_uid

from recipes.common.holder import holder_setup
from recipes.env.state import (base_dir, bound_inodes, env_dir, env_entries, global_lock,
                       ns_file)
from recipes.env.userns import user_holder, userns_prefix

#: PID 1 of the shell form: `wait` reaps every child, also orphans re-parented to it
REAPER = "while :; do sleep infinity & wait; done"


# --- what the holder runs -------------------------------------------------------------------

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


def env_unshare_argv(name: str, types: Sequence[NsType], *, rootless: bool = False,
                     map_root: bool = True, userns_pid: int | Placeholder | None = None
                     ) -> list[str]:
    """``unshare --uts=/run/nsrecipes/NAME/uts ... --mount [--fork --kill-child --mount-proc]
    -- ...`` (the files of :func:`bound_later` are bound afterwards).

    ``rootless``: ``unshare --user [--map-root-user] --uts ...`` with nothing bound (the user
    namespace first; ``map_root``: the user mapped to 0, else the maps are left unwritten);
    with ``userns_pid`` (the per-user holder) ``nsenter -t PID --user --preserve-credentials
    -- unshare --uts ...``: the new namespaces are owned by the user namespace all of this
    user's environments share."""
    names_ = {t.name for t in types}
    if rootless:
        first = [] if userns_pid is not None else \
            list(UNSHARE_OPTIONS if map_root else UNSHARE_OPTIONS[:1])
        argv = ["unshare"] + first + [t.option for t in types if t.name != "user"]
    else:
        later = bound_later(types)
        argv = ["unshare"] + [t.option if t in later else f"{t.option}={ns_file(name, t)}"
                              for t in types]
    if "pid" in names_:
        argv += ["--fork", "--kill-child"] + (["--mount-proc"] if "mnt" in names_ else [])
        argv += ["--", "sh", "-c", REAPER]
    else:
        if needs_fork(types):              # a time namespace: for unshare's child only
            argv += ["--fork", "--kill-child"]
        argv += ["--", "sleep", "infinity"]
    return argv if userns_pid is None else userns_prefix(userns_pid, argv)


def bind_argvs(name: str, pid: int | str, types: Sequence[NsType]) -> list[list[str]]:
    """``mount --bind /proc/PID/ns/TYPE /run/nsrecipes/NAME/TYPE`` for each type."""
    return [["mount", "--bind", f"/proc/{pid}/ns/{t.proc}", ns_file(name, t)] for t in types]


# --- starting it ----------------------------------------------------------------------------

def start_env_holder(run: Runner, name: str, types: Sequence[NsType], *,
                     map_root: bool = True) -> dict:
    """Step: start the holder in new namespaces of ``types``, each bound on
    /run/nsrecipes/NAME/TYPE (on a private bind of /run/nsrecipes); returns the record's
    ``holder``, ``parent`` and ``ns`` (pid, start time, namespace inodes).

    Without root (``run.rootless``) the holder's user namespace comes first and nothing is
    bound: the holder keeps them all (``map_root``: this user mapped to 0 inside)."""
    if run.rootless:
        return _start_rootless(run, name, types, map_root)
    argv = env_unshare_argv(name, types)
    later = bound_later(types)
    reaps = any(t.name == "pid" for t in types)
    with private_base(run):
        return run.run(Step(
            f"start the holder in new {sc.flag_names(flags_of(types))} namespaces, each "
            f"bound on {env_dir(name)}/TYPE" + ("; PID 1 there reaps orphans" if reaps else ""),
            argv=argv, native=lambda: start_native(name, types),
            display=None if not later else shlex.join(argv) + " &  " + "; ".join(
                " ".join(b) for b in bind_argvs(name, "$!", later)),
            shell=lambda a: start_shell(name, a, types),
            placeholder=_PLACEHOLDER))


_PLACEHOLDER = {"holder": {"pid": Placeholder("$PID"), "start": 0},
                "parent": {"pid": Placeholder("$PID"), "start": 0}, "ns": {}}


def _start_rootless(run: Runner, name: str, types: Sequence[NsType], map_root: bool) -> dict:
    """The rootless holder: ``unshare --user --map-root-user --uts ... --fork`` in a session of
    its own; natively fork and unshare them all at once, and this user is mapped to 0 in
    the new user namespace from outside before the holder goes on.

    With ``map_root`` (no id maps of its own) the user namespace is not new but the one all
    of this user's environments share (:mod:`recipes.env.userns`): ``nsenter -t USERNS
    --user --preserve-credentials -- unshare --uts ... --fork``; natively setns to it, then
    unshare the rest."""
    if map_root:
        return _start_in_shared_userns(run, name, types)
    argv = env_unshare_argv(name, types, rootless=True, map_root=map_root)
    return _rootless_holder_step(
        run, name, types, argv, "start the holder in a new user namespace (you are root in it) "
        "owning new {ns} namespaces", lambda: start_native(name, types, rootless=True,
                                                          map_root=map_root))


def _start_in_shared_userns(run: Runner, name: str, types: Sequence[NsType]) -> dict:
    upid = user_holder(run)
    argv = env_unshare_argv(name, types, rootless=True, userns_pid=upid)
    return _rootless_holder_step(
        run, name, types, argv, "start the holder in new {ns} namespaces owned by your user "
        f"namespace (pid {upid}: you are root in it)",
        lambda: start_native(name, types, rootless=True, userns_of=upid))


def _rootless_holder_step(run: Runner, name: str, types: Sequence[NsType], argv: list[str],
                          title: str, native: Callable[[], dict]) -> dict:
    """The step that starts a rootless holder: ``title`` with ``{ns}`` for the namespaces
    other than user; the shell form runs ``argv``."""
    reaps = any(t.name == "pid" for t in types)
    others = [t for t in types if t.name != "user"]
    return run.run(Step(
        title.format(ns=sc.flag_names(flags_of(others))) + "; it alone keeps them"
        + ("; PID 1 there reaps orphans" if reaps else ""),
        argv=argv, native=native, shell=lambda a: start_shell(name, a, types, rootless=True),
        placeholder=_PLACEHOLDER))


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


def _native_holder(name: str, types: Sequence[NsType], *, map_root: bool = False,
                   userns_of: int | None = None) -> tuple[int, int]:
    """fork, setsid, unshare (and fork again for a PID namespace), make / private and mount
    /proc as ``unshare --mount --mount-proc`` does: (holder pid, parent pid). ``map_root``
    maps this user to 0 in the new user namespace from outside (``--map-root-user``), as
    soon as the holder has unshared and before it mounts /proc. ``userns_of``: setns to that
    process's user namespace first and unshare the others in it."""
    before = _map_root_from_outside if map_root else None
    flags = flags_of([t for t in types if t.name != "user"] if userns_of else types)
    holder = process.spawn_holder(flags, setup=holder_setup(types, mount_proc=True),
                                  before=before, detach=True, quiet=True, name=name,
                                  userns_of=userns_of)
    return holder.pid, holder.parent


def _map_root_from_outside(pid: int) -> None:
    """``--map-root-user`` for process ``pid``, written by its parent (the owner of its user
    namespace): ``0 UID 1`` to uid_map, ``deny`` to setgroups, ``0 GID 1`` to gid_map."""
    from nsutil import idmap
    idmap.write_uid_map(pid, [idmap.IdMap(0, outside_uid(), 1)])
    idmap.write_gid_map(pid, [idmap.IdMap(0, outside_gid(), 1)])


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
    return {"holder": procfs.identity(pid), "parent": procfs.identity(parent), "ns": ns}


def _kill_holder(pid: int, parent: int) -> None:
    process.kill_and_reap(pid, parent)
    process.kill_and_reap(parent, parent)


def start_native(name: str, types: Sequence[NsType], *, rootless: bool = False,
                 map_root: bool = False, userns_of: int | None = None) -> dict:
    """The native form of :func:`start_env_holder` (``rootless``: nothing bound;
    ``userns_of``: in that process's user namespace)."""
    def rootless_helper() -> dict:
        pid, parent = _native_holder(name, types, map_root=map_root, userns_of=userns_of)
        return _holder_record(pid, parent, types)

    def inside_helper() -> dict:
        pid, parent = _start_in_bindable_order(types, lambda: _native_holder(name, types),
                                               _kill_holder)
        try:
            _bind_all(name, pid, types)
            return _holder_record(pid, parent, types)
        except BaseException:
            _kill_holder(pid, parent)
            raise
    return process.fork_call(rootless_helper if rootless else inside_helper,
                             f"start the holder of {name}", detached=True)


def _spawn_unshare(argv: list[str], types: Sequence[NsType], name: str,
                   by_unshare: int | None = None) -> tuple[int, int]:
    """Run ``unshare ...`` in its own session; wait until its holder runs in the new
    namespaces with unshare's own binds made (``by_unshare`` of them; default: all but
    :func:`bound_later`'s): (holder pid, unshare's pid)."""
    forks = needs_fork(types)
    if by_unshare is None:
        by_unshare = len(types) - len(bound_later(types))
    probe = types[0].proc
    null = os.open(os.devnull, os.O_RDWR)
    err = os.memfd_create("nsr-unshare-stderr", os.MFD_CLOEXEC)
    try:
        parent = os.posix_spawn(programs.which(argv[0]) or argv[0], argv, dict(os.environ),
                                file_actions=[(os.POSIX_SPAWN_DUP2, null, 0),
                                              (os.POSIX_SPAWN_DUP2, null, 1),
                                              (os.POSIX_SPAWN_DUP2, err, 2)],
                                setsid=True)
    finally:
        os.close(null)

    def ready() -> int | None:
        if not procfs.pid_alive(parent):
            rc = process.wait_child(parent)
            os.lseek(err, 0, os.SEEK_SET)
            raise CommandError(argv, rc, os.read(err, 4096).decode(errors="replace"))
        reaper = any(t.name == "pid" for t in types)
        pid = procfs.started_pid(parent, "sh" if reaper else "sleep", forks)
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


def start_shell(name: str, argv: list[str], types: Sequence[NsType], *,
                rootless: bool = False) -> dict:
    """The shell form of :func:`start_env_holder`: run ``argv`` (unshare) and bind what it
    did not (``rootless``: nothing is bound)."""
    def rootless_helper() -> dict:
        pid, parent = _spawn_unshare(argv, types, name, by_unshare=0)
        return _holder_record(pid, parent, types)

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
    return process.fork_call(rootless_helper if rootless else inside_helper,
                             f"start the holder of {name}", detached=True)


# --- the private mount under /run/nsrecipes -------------------------------------------------
#
# nsrecipes never changes a mount it did not make: whatever is mounted on the state directory
# already (a tmpfs or a disk of the user's, systemd's shared /run) keeps its propagation, its
# directory and its content. nsrecipes binds the directory on itself, *on top* of whatever is
# there, makes only that bind private, and records it (:mod:`nsutil.mountinfo`: mount ID,
# parent ID, mount point, root, and the unique ID where the kernel has one). The last removal
# unmounts exactly the recorded mounts, and nothing else.

#: the record of the private bind(s) nsrecipes made on the state directory
BIND_RECORD = ".private-bind.json"


def _bind_records(base: str) -> list[dict]:
    """The recorded binds on ``base``. A pending record (written before the bind, so that a
    process killed between ``mount`` and its record leaves one) is completed here -- under
    the state directory's lock, so its maker is gone -- if the mount on ``base`` is that bind:
    a mount that was not there before, of the very directory that was bound."""
    path = os.path.join(base, BIND_RECORD)
    try:
        data = state.read_json(path)
    except (OSError, ValueError):
        return []
    records = [r for r in data if isinstance(r, dict)] if isinstance(data, list) else []
    pending = next((r for r in records if r.get("pending")), None)
    if pending is None:
        return records
    earlier = [r for r in records if not r.get("pending")]
    top = mountinfo.covering(base)
    if (top is None or top.mount_id in pending.get("before", [])
            or [top.dev, top.root] != pending.get("source")):
        return earlier
    done = earlier + [mountinfo.mount_record(base)]
    state.atomic_write_json(path, done)
    return done


def ours_on_top(base: str) -> bool:
    """True if the topmost mount on ``base`` is the private bind nsrecipes made and recorded."""
    return any(mountinfo.is_recorded(base, r) for r in _bind_records(base))


def _source_of(base: str) -> list[str]:
    """[dev, root] that a bind of ``base`` on itself will have: those of the mount ``base``
    shows, with ``base``'s path inside that filesystem."""
    m = mountinfo.visible(base)
    if m is None:
        return ["", ""]
    return [m.dev, os.path.normpath(os.path.join(m.root, os.path.relpath(base, m.mount_point)))]


def _bind_on_top(base: str, bind: Callable[[], None]) -> None:
    """``bind()`` the state directory on itself and record every mount it added on ``base``
    (a bind made on a shared mount can arrive twice: the bind and its propagated copy).

    The record is written first as pending (what was on ``base`` before, and the source), so
    a SIGKILL between ``mount`` and the full record still leaves a bind the next run knows as
    ours (:func:`_bind_records`). Whatever else stops it half-way -- a full disk, a Ctrl-C
    while ``mount`` runs or before the record -- takes the new mounts down again. The
    records of earlier binds of ours that are still mounted (covered by another mount) are
    kept beside the new one: a record is dropped only with its mount, so no bind of ours is
    ever left that no record names."""
    mounts = mountinfo.read()
    before = sorted(m.mount_id for m in mounts if m.mount_point == base)
    path = os.path.join(base, BIND_RECORD)
    earlier = [r for r in _bind_records(base) if mountinfo.still_mounted(r, mounts)]
    state.atomic_write_json(path, earlier + [{"pending": True, "before": before,
                                              "source": _source_of(base)}])
    try:
        bind()
        top = mountinfo.mount_record(base)
        added = [{"mount_id": m.mount_id, "parent_id": m.parent_id,
                  "mount_point": m.mount_point, "root": m.root, "unique_id": None}
                 for m in mountinfo.read() if m.mount_point == base and m.mount_id not in before]
        records = [top if top is not None and r["mount_id"] == top["mount_id"] else r
                   for r in added]
        state.atomic_write_json(path, earlier + records)
    except BaseException:
        for _ in range(4):      # the bind and a propagated copy, at most
            on_top = mountinfo.covering(base)
            if on_top is None or on_top.mount_id in before:
                break
            sc.umount(base, sc.MNT_DETACH)
        _keep_records(path, earlier)
        raise


def _keep_records(path: str, records: list[dict]) -> None:
    """Write ``records`` as the bind record, or remove it when there are none."""
    if records:
        state.atomic_write_json(path, records)
    else:
        sc.remove_if_present(path)


@contextmanager
def private_base(run: Runner) -> Iterator[None]:
    """Step: bind /run/nsrecipes on itself as a private mount of nsrecipes' own (on top of
    anything mounted there), and keep it while the block binds the namespace files on it.

    A mount-namespace file cannot be bound on a mount that propagates. The step runs under
    the exclusive lock on /run/nsrecipes; the block then holds a shared one, which the last
    removal's unmount (:func:`release_private_base`) waits for. Downgrading an flock is not
    atomic, so the mount is checked again once the shared lock is held.
    """
    base = base_dir()
    argvs = [["mount", "--bind", base, base], ["mount", "--make-private", base]]

    def bind() -> None:
        if not ours_on_top(base):
            _bind_on_top(base, lambda: sc.mount(base, base, None, sc.MS_BIND))

    def native() -> None:
        bind()
        sc.make_propagation(base, "private")

    def shell(_argv: list[str]) -> None:
        # The bind is made by this process on both backends: a `mount --bind` child outlives
        # a SIGKILLed tool, and on a loaded machine it landed its bind after the cleanup, on
        # top of the next run's, where no record names it (hiding that run's namespace files).
        bind()
        nshell.run(argvs[1])

    step = Step(f"bind {base} on itself as a private mount of our own (a mount-namespace file "
                "cannot be bound on a shared one; what is mounted there already is left as it is)",
                argv=argvs[0], native=native, shell=shell,
                display=" && ".join(" ".join(a) for a in argvs))
    if run.explain:
        run.run(step)
        yield
        return
    with global_lock() as fd:
        for _ in range(10):
            run.run(step)
            fcntl.flock(fd, fcntl.LOCK_SH)
            if ours_on_top(base) and _is_private_mount(base):
                break
            fcntl.flock(fd, fcntl.LOCK_EX)  # unmounted in between: once more
        else:
            raise NsrError(f"{base} does not stay a private mount",
                           hint="see `findmnt -o+PROPAGATION` for what changes it")
        yield


def _is_private_mount(path: str) -> bool:
    """True if ``path`` is a mount point whose top mount propagates nowhere (not shared)."""
    m = mountinfo.covering(path)
    return m is not None and m.tag("shared") is None


def release_private_base(run: Runner) -> None:
    """Step: once no environment is left, unmount the private bind(s) nsrecipes made on
    /run/nsrecipes -- only those its record names, never a mount of anyone else's -- and
    remove the directory if nsrecipes made it (both under the lock, so no create is between
    its :func:`private_base` and its binds, nor between its lock and its record)."""
    base = base_dir()
    if run.explain:
        run.run(Step(f"unmount our private bind of {base} if no environment is left",
                     argv=["umount", "-l", base]))
        return
    if not os.path.isdir(base):
        return
    with global_lock():
        if env_entries() or mountinfo.below(base):
            return
        records = _bind_records(base)
        for _ in records:
            if not any(mountinfo.is_recorded(base, r) for r in records):
                break
            # lazy: our own lock fd on the directory still pins the mount for a moment
            run.run(Step(f"no environment is left: unmount our private bind of {base}",
                         argv=["umount", "-l", base],
                         native=lambda: sc.umount(base, sc.MNT_DETACH)))
        # a bind of ours still mounted (under a mount of someone else's) keeps its record
        mounts = mountinfo.read()
        _keep_records(os.path.join(base, BIND_RECORD),
                      [r for r in records if mountinfo.still_mounted(r, mounts)])
        state.prune(have_lock=True)
