"""Steps every section uses: start a namespace holder, run a command inside it, stop it.

The shell forms are the util-linux commands the document's C programs correspond to:
``unshare --uts -- sleep infinity`` keeps a new UTS namespace alive, ``nsenter -t PID --uts
-- hostname`` runs a command inside it, ``kill -KILL PID`` ends it. The native forms do the
same with fork()+unshare()/setns() (:mod:`nsutil.process`).
"""
from __future__ import annotations

import os
from typing import Callable, Iterable, Sequence

from nsutil import process, programs
from nsutil import procfs
from nsutil import rootless
from nsutil.backend import Placeholder, Runner, Step
from nsutil.errors import CommandError, InvalidInput, NsrError
from nsutil.lesson import Inside
from nsutil.nstypes import NsType, flags_of, needs_fork, ns_inode, parse_types
from nsutil import shell as nshell
from nsutil import syscalls as sc


def unshare_argv(types: Sequence[NsType], *, mount_proc: bool = False,
                 propagation: str = "private", userns_first: bool = False) -> list[str]:
    """``unshare --uts --pid --fork [--mount-proc] -- sleep infinity`` for ``types``.

    ``propagation`` (mount namespaces only): ``private`` is unshare's default (``--mount``
    makes ``/`` rprivate); ``unchanged``/``shared``/``slave`` add ``--propagation``.
    ``userns_first`` (without root): ``--user --map-root-user`` come first, so a user
    namespace with this user as its root owns every other namespace.
    """
    argv = ["unshare"] + (list(rootless.UNSHARE_OPTIONS) if userns_first else [])
    argv += [t.option for t in types]
    if propagation != "private" and any(t.name == "mnt" for t in types):
        argv.append(f"--propagation={propagation}")
    if needs_fork(types):
        argv.append("--fork")
    if mount_proc and any(t.name == "pid" for t in types):
        argv.append("--mount-proc")
    return argv + ["--", "sleep", "infinity"]


def holder_setup(types: Sequence[NsType], mount_proc: bool,
                 propagation: str = "private") -> Callable[[], None]:
    """What ``unshare --mount [--mount-proc]`` does in the new namespaces, as a function for
    a native holder: make / private (keep our mounts from reaching the host) and mount the
    new PID namespace's /proc."""
    names = {t.name for t in types}

    def setup() -> None:
        if "mnt" in names and propagation != "unchanged":
            # what `unshare --mount` does by default: keep our mounts from propagating back
            sc.make_propagation("/", propagation, recursive=True)
        if mount_proc and "pid" in names and "mnt" in names:
            sc.mount("proc", "/proc", "proc", sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC)
    return setup


def shell_holder(argv: list[str], types: Sequence[NsType], detach: bool,
                  before=None, userns_first: bool = False) -> process.Holder:
    """Start ``unshare ... sleep infinity`` in the background; find the process holding.
    ``userns_first``: the argv begins with ``--user --map-root-user`` (its user namespace
    is the holder's too)."""
    parent, errfile = spawn_background(argv, detach=detach)
    probe = types[0]
    mine = ns_inode("self", probe)
    forks = needs_fork(types)

    def ready() -> int | None:
        if not procfs.pid_alive(parent):
            raise CommandError(argv, process.wait_child(parent),
                               read_back(errfile) or "unshare failed (run it by hand to see why)")
        pid = procfs.started_pid(parent, "sleep", forks)
        if pid is None:
            return None
        try:
            return pid if ns_inode(pid, probe) != mine else None
        except (NsrError, OSError):
            return None

    try:
        pid = process.wait_for(ready, 10, f"`{' '.join(argv)}` to start")
        if before is not None:
            before(pid)
    except BaseException:
        process.kill_and_reap(parent, parent)
        raise
    finally:
        os.close(errfile)
    return process.Holder(pid, parent,
                          flags_of(types) | (sc.CLONE_NEWUSER if userns_first else 0))


def spawn_background(argv: Sequence[str], *, detach: bool = False) -> tuple[int, int]:
    """posix_spawn ``argv`` with stdin from /dev/null and stderr into an anonymous file.

    Returns (pid, fd of that file). The file keeps what the command says on stderr away from
    the user's terminal -- e.g. ``unshare --fork``'s "sigprocmask unblock failed" when its
    child is SIGKILLed -- while :func:`read_back` can still quote it when starting fails.
    """
    import tempfile
    argv = [str(a) for a in argv]
    with tempfile.TemporaryFile() as tmp:  # unnamed (O_TMPFILE): nothing to clean up
        errfile = os.dup(tmp.fileno())
    devnull = os.open(os.devnull, os.O_RDWR)
    try:
        pid = os.posix_spawn(programs.which(argv[0]) or argv[0], argv, os.environ,
                             file_actions=[(os.POSIX_SPAWN_DUP2, devnull, 0),
                                           (os.POSIX_SPAWN_DUP2, errfile, 2)],
                             setsid=detach)
    except BaseException:
        os.close(errfile)
        raise
    finally:
        os.close(devnull)
    return pid, errfile


def read_back(fd: int) -> str:
    """What a background command wrote to its stderr file so far."""
    try:
        return os.pread(fd, 65536, 0).decode(errors="replace").strip()
    except OSError:
        return ""


def start_holder(run: Runner, types: str | Iterable[NsType], *, mount_proc: bool = False,
                 detach: bool = False, before=None, setup=None,
                 title: str | None = None, propagation: str = "private") -> process.Holder:
    """Step: start a process that holds new namespaces of ``types``; undo: stop it.

    ``before(pid)`` runs once the namespaces exist (write uid/gid maps there);
    ``setup()`` runs inside the native holder (the shell form does that through nsenter).
    ``propagation`` of a new mount namespace's ``/``: ``private`` (unshare's default) or
    ``unchanged`` (keep the host's peer groups; see :mod:`recipes.mount`), ``shared``, ``slave``.

    Without root (``run.rootless``) and no user namespace among ``types``, a user namespace
    with this user as its root comes first and owns the others (``unshare --user
    --map-root-user ...``; native: :func:`nsutil.rootless.become_root_in_userns`); joining
    the holder later joins that user namespace first (:func:`join_types`).
    """
    if propagation not in ("private", "unchanged", "shared", "slave"):
        raise InvalidInput(f"unknown propagation {propagation!r}",
                           hint="choose private, unchanged, shared or slave")
    types = parse_types(types) if isinstance(types, str) else list(types)
    userns_first = bool(run.rootless) and not any(t.name == "user" for t in types)
    argv = unshare_argv(types, mount_proc=mount_proc, propagation=propagation,
                        userns_first=userns_first)
    native_setup = holder_setup(types, mount_proc, propagation)
    flags = flags_of(types) | (sc.CLONE_NEWUSER if userns_first else 0)

    def native() -> process.Holder:
        def both() -> None:
            native_setup()
            if setup is not None:
                setup()
        return process.spawn_holder(flags_of(types), setup=both, before=before, detach=detach,
                                    userns_first=userns_first)

    owned = "a new user namespace and, owned by it, " if userns_first else ""
    holder = run.run(Step(
        title or f"start a process in {owned}new "
                 f"{'+'.join(t.name.upper() for t in types)} namespaces "
                 f"({sc.flag_names(flags)})",
        argv=argv, native=native, shell=lambda a: shell_holder(a, types, detach, before, userns_first),
        placeholder=process.Holder(Placeholder("$PID"), Placeholder("$PID"), flags),
    ))
    holder.stop_step = stop_step(holder)  # type: ignore[attr-defined]
    run.defer(holder.stop_step)  # type: ignore[attr-defined]
    run.inside(Inside(holder.pid, tuple(t.name for t in join_types(holder, types))))  # lessons
    return holder


def start_holder_beside(run: Runner, outer: process.Holder, types: str) -> process.Holder:
    """Step: start a holder of new namespaces of ``types`` owned by ``outer``'s user
    namespace (``nsenter -t OUTER --user --preserve-credentials -- unshare --net -- sleep
    infinity``), so that root there may act on both (a veth pair between them); undo: stop it.
    Without root, two holders of :func:`start_holder` would have two user namespaces, and
    neither would be root in the other's network namespace."""
    ts = parse_types(types)
    argv = nsenter_argv(outer.pid, parse_types("user"), unshare_argv(ts))
    holder = run.run(Step(
        f"start a process in new {'+'.join(t.name.upper() for t in ts)} namespaces owned by "
        f"the user namespace of pid {outer.pid}",
        argv=argv, shell=lambda a: shell_holder(a, ts, False, None, True),
        native=lambda: process.spawn_holder(flags_of(ts), userns_of=outer.pid),
        placeholder=process.Holder(Placeholder("$PID2"), Placeholder("$PID2"),
                                   flags_of(ts) | sc.CLONE_NEWUSER)))
    holder.stop_step = stop_step(holder)  # type: ignore[attr-defined]
    run.defer(holder.stop_step)  # type: ignore[attr-defined]
    run.inside(Inside(holder.pid, tuple(t.name for t in join_types(holder, ts))))  # lessons
    return holder


def stop_holder(run: Runner, holder: process.Holder) -> None:
    """Step: stop a holder now ("the child exits"), instead of at the end of the run."""
    run.finish(holder.stop_step)  # type: ignore[attr-defined]


def stop_step(holder: process.Holder) -> Step:
    """Step: SIGKILL the holder (and everything in its PID namespace) and reap it."""
    def stop(_argv: list[str] | None = None) -> None:
        holder.stop()
    return Step(f"stop the holder (pid {holder.pid}); its namespaces go with it",
                argv=["kill", "-KILL", holder.pid], native=stop, shell=stop)


def join_types(holder: process.Holder, types: str | Iterable[NsType]) -> list[NsType]:
    """``types`` plus the holder's user namespace when it has one: joining a namespace owned
    by a user namespace needs that user namespace first (as ``nsenter --user`` does)."""
    types = parse_types(types) if isinstance(types, str) else list(types)
    if isinstance(holder.flags, int) and holder.flags & sc.CLONE_NEWUSER:
        types = parse_types([t.name for t in types] + ["user"])
    return types


def enter_argv(holder: process.Holder, types: str | Iterable[NsType], argv: Sequence) -> list:
    """``nsenter -t PID [--user] --TYPE... -- argv`` for a holder."""
    return nsenter_argv(holder.pid, join_types(holder, types), argv)


def nsenter_argv(pid: int | str, types: Sequence[NsType], argv: Sequence[str]) -> list[str]:
    """``nsenter -t PID --uts ... -- argv``."""
    opts = [t.option for t in types]
    if "--user" in opts and rootless.decide():
        # unprivileged: our own uid is the one mapped to 0 inside; nsenter's default
        # setgroups()+setuid(0) fails where setgroups is denied
        opts = list(rootless.NSENTER_OPTIONS) + [o for o in opts if o != "--user"]
    return ["nsenter", "-t", pid] + opts + ["--"] + list(argv)


def run_inside(run: Runner, holder: process.Holder | int, types: str | Iterable[NsType],
               argv: Sequence[str], title: str, *, check: bool = True,
               input: str | None = None) -> process.Completed:
    """Step: run ``argv`` inside the holder's namespaces; returns its output (both backends)."""
    if isinstance(holder, process.Holder):
        types, pid = join_types(holder, types), holder.pid
    else:
        types, pid = (parse_types(types) if isinstance(types, str) else list(types)), holder
    full = nsenter_argv(pid, types, argv)

    def native() -> process.Completed:
        done = process.exec_in(pid, types, argv, input=input.encode() if input else None)
        return done.check() if check else done

    def shell(a: list[str]) -> process.Completed:
        done = nshell.run_full(a, input=input)
        return done.check() if check else done

    return run.run(Step(title, argv=full, native=native, shell=shell,
                        placeholder=process.Completed(list(full), 0, "")))
