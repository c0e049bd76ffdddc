"""The whole container: namespaces + cgroups + copy-on-write, started step by step.

The document's three principles composed the way ``docker run`` / runc compose them:

1. check the input (rootfs with a shell, limits, the command exists in the rootfs);
2. make the container's directory (overlay ``upper``, ``work``, ``merged``; where the state
   directory's filesystem cannot hold an upper, e.g. an overlayfs, on a tmpfs mounted on
   it, as bubblewrap's ``--tmp-overlay`` does: :mod:`recipes.upperfs`);
3. make a cgroup ``nsr-c-ID`` and write the limits (:mod:`recipes.cgroup`);
4. fork a process, unshare mount, UTS, IPC, PID (and with ``--net`` network) namespaces and
   fork PID 1 of the new PID namespace; the tool records both PIDs for ``cleanup``. PID 1
5. moves itself into the cgroup (``echo 0 > tasks``) and unshares a cgroup namespace,
   makes ``/`` rslave, mounts the overlay (rootfs as lowerdir) on ``merged``, ``/proc``, a
   tmpfs ``/dev`` with null, zero, full, random, urandom, tty, sets the hostname, brings
   ``lo`` up in a new netns,
6. ``pivot_root . .`` into ``merged``, makes the old root rslave and detaches it,
7. forks the command and execs it; PID 1 stays, reaps every zombie (orphans are reparented
   to it) and forwards SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1/2, SIGWINCH to the command
   (the tool and the process outside forward them too);
8. the exit status comes back (128+N for a signal); with ``rm`` (the default) the cgroup and
   the container's directory are removed. If the tool dies, everything inside dies with it
   (PR_SET_PDEATHSIG) and ``cleanup`` finds the records.

Every step is a recipe call, so ``--explain`` prints the whole sequence, and a script can
compose the same steps differently. The steps of 5 and 6 run inside the new namespaces
(in PID 1, before the exec) with the runner's backend: ``mount ...``/``hostname``/
``ip link``/``pivot_root`` commands or the syscalls. The overlay and /proc are mounted in
the container's own mount namespace only, so they vanish with it: the host never sees them.
"""
from __future__ import annotations

import os
import pickle
import signal
import stat
import sys
import time
from dataclasses import dataclass, field
from typing import Sequence

from nsutil import cgroupfs
from nsutil import process
from nsutil import shell as nshell
from nsutil import syscalls as sc
from nsutil.backend import Runner, Step
from nsutil.cgroupfs import Cgroup, Limits
from nsutil.errors import InvalidInput, NotFound, NsrError, SyscallError
from nsutil.names import PREFIX, check_hostname, scope_id
from nsutil.state import prune, read_json, state_dir

from . import cgroup as cgroup_recipe
from . import rootfs as rootfs_recipe
from . import upperfs
from .common import Leftover
from .cow import mount_overlay, remove_tree

SECTION = "the whole container (namespaces + cgroups + copy-on-write)"
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1,
             signal.SIGUSR2, signal.SIGWINCH)
DEVICES = (("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8),
           ("urandom", 1, 9), ("tty", 5, 0))
DEV_LINKS = (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
             ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2"))
#: exit status of PID 1 when a setup step inside failed (docker uses 125 for its own errors)
SETUP_FAILED = 125


class CommandNotFound(NotFound):
    """The command does not exist in the container's root filesystem (exit status 127)."""

    exit_code = 127


class CommandNotExecutable(NsrError):
    """The command exists in the rootfs but cannot be executed (exit status 126)."""

    exit_code = 126


@dataclass
class Spec:
    """What to run and how; build it with :func:`make_spec` (which validates everything)."""

    argv: list[str]
    rootfs: str | None
    limits: Limits = field(default_factory=Limits)
    hostname: str | None = None
    net: bool = False
    rm: bool = True
    name: str = ""
    command_path: str | None = None   #: argv[0] resolved inside the rootfs


@dataclass
class Container:
    """A started container: its name, directory, cgroup and host PIDs."""

    name: str
    dir: str
    cgroup: Cgroup
    rootfs: str
    pid: int = 0            #: the forked process outside (parent of PID 1)
    report_r: int = -1      #: read end of the error pipe
    reaped: bool = False    #: True once ``pid`` has been waited for (never signal it again)
    pid1: int = 0           #: PID 1 of the container, as the host sees it

    @property
    def upper(self) -> str:
        """The overlay's upper directory: everything the container wrote."""
        return os.path.join(self.dir, "upper")

    @property
    def work(self) -> str:
        """The overlay's work directory."""
        return os.path.join(self.dir, "work")

    @property
    def merged(self) -> str:
        """Where the overlay is mounted (inside the container's mount namespace only)."""
        return os.path.join(self.dir, "merged")


# --- input ------------------------------------------------------------------------------------

def make_spec(argv: Sequence[str], rootfs: str | None = None, memory: str | int | None = None,
              pids: str | int | None = None, cpus: str | float | None = None,
              hostname: str | None = None, net: bool = False, rm: bool = True,
              name: str | None = None) -> Spec:
    """Validate everything a user gave (nothing is created here)."""
    argv = [str(a) for a in argv]
    command_path = None
    if not argv or not argv[0]:
        raise InvalidInput("no command given", hint="write the command after --, e.g. -- sh -c 'echo hi'")
    limits = Limits.parse(memory, pids, cpus)
    if hostname is not None:
        check_hostname(hostname)
    if rootfs is not None:
        rootfs = rootfs_recipe.check_rootfs(rootfs)
        for ch in ",:":
            if ch in rootfs:
                raise InvalidInput(f"rootfs path {rootfs!r} contains {ch!r}",
                                   hint="overlayfs options cannot carry it: use another path")
        command_path = find_command(rootfs, argv[0])
    name = name or f"{PREFIX}-c-{scope_id()}"
    if not name.startswith(f"{PREFIX}-c-"):
        raise InvalidInput(f"container name {name!r} must start with {PREFIX}-c-",
                           hint=f"e.g. {PREFIX}-c-web")
    from nsutil.names import check_name
    check_name(name, what="container name", max_bytes=40)
    return Spec(argv, rootfs, limits, hostname, net, rm, name, command_path)


def find_command(rootfs: str, command: str) -> str:
    """The path inside ``rootfs`` that ``command`` resolves to (as execvp would), else raise
    :class:`CommandNotFound` (exit status 127)."""
    if "/" in command:
        candidates = [command if command.startswith("/") else "/" + command]
    else:
        candidates = [f"{d}/{command}" for d in PATH.split(":")]
    for c in candidates:
        host = rootfs_recipe.resolve_in(rootfs, c)
        if host is not None and os.path.isfile(host):
            if not os.access(host, os.X_OK):
                raise CommandNotExecutable(f"{c} in the rootfs {rootfs} is not executable",
                                           hint="chmod +x it, or run it through sh")
            return c
    raise CommandNotFound(f"command {command!r} not found in the rootfs {rootfs}",
                          hint=f"searched {PATH if '/' not in command else command}; "
                               "the container sees only its own root filesystem")


# --- steps outside ----------------------------------------------------------------------------

def _rmtree_step(path: str) -> Step:
    def native() -> None:
        remove_tree(path)
        prune()

    def shell(argv: list[str]) -> None:
        nshell.run(argv)
        prune()

    return Step(f"remove the container directory {path}",
                argv=["rm", "-rf", "--one-file-system", path], native=native, shell=shell)


def make_dirs(run: Runner, spec: Spec, fs: upperfs.Fs | None = None) -> str:
    """Steps: make the container's directory with the overlay's upper, work and merged dirs
    (on a tmpfs mounted on it where the state directory's filesystem ``fs`` cannot hold an
    upper); undo: remove it (unless ``rm`` is off)."""
    base = state_dir(create=not run.explain)
    cdir = os.path.join(base, spec.name)
    subdirs = [os.path.join(cdir, d) for d in ("upper", "work", "merged")]
    fs = fs or upperfs.plan_upper(base)
    on_tmpfs = upperfs.needs_tmpfs(fs)
    first = [cdir] if on_tmpfs else [cdir] + subdirs

    def mkdirs(paths: list[str]) -> None:
        for d in paths:
            try:
                os.mkdir(d, 0o700 if d == cdir else 0o755)
            except FileExistsError:
                raise NsrError(f"container directory {d} exists", errno_name="EEXIST",
                               hint="another container has that name; run `invoke cleanup`") from None

    run.run(Step(f"make the container directory {cdir}" + ("" if on_tmpfs else
                 " (overlay upper, work, merged)"), argv=["mkdir"] + first,
                 native=lambda: mkdirs(first), undo=_rmtree_step(cdir) if spec.rm else None))
    if on_tmpfs:
        upperfs.mount_upper_tmpfs(run, cdir, fs, undo=spec.rm, mode="0700")
        run.run(Step("make the overlay's upper, work and merged in it", argv=["mkdir"] + subdirs,
                     native=lambda: mkdirs(subdirs)))
    return cdir


def record(run: Runner, ct: Container, spec: Spec) -> None:
    """Step: record the container (pid, cgroup, directory) so `cleanup` can find it."""
    path = os.path.join(ct.dir, "state.json")

    def native() -> None:
        _write_json(path, {
            "name": ct.name, "dir": ct.dir, "rootfs": ct.rootfs, "argv": spec.argv,
            "pid": ct.pid, "starttime": process.start_time(ct.pid) if ct.pid else None,
            "pid1": ct.pid1, "pid1_starttime": process.start_time(ct.pid1) if ct.pid1 else None,
            "cgroup": ct.cgroup.unique_dirs(), "created": time.time(), "rm": spec.rm})
    run.run(Step(f"record the container in {path}", display=f"echo '{{...}}' > {path}",
                 native=native))


def _write_json(path: str, data: dict) -> None:
    """Write a state file atomically (temporary name, rename). No fsync: the record only has
    to outlive the tool, not the machine (/run is gone after a reboot anyway)."""
    import json
    tmp = f"{path}.tmp"
    try:
        with open(tmp, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except OSError as exc:
        raise SyscallError.from_oserror(f"write({path!r})", exc) from None


def cgroup_controllers(spec: Spec) -> tuple[str, ...]:
    """The controllers of the container's cgroup: those of the limits asked for, and on v1
    pids always (a v1 cgroup exists only in a controller's hierarchy; a bare v2 cgroup groups
    and kills its processes by itself, so v2 needs no controller delegated for that)."""
    v1 = cgroupfs.host_layout().mode != "unified"
    return tuple(c for c, on in (("memory", spec.limits.memory is not None),
                                 ("pids", v1 or spec.limits.pids is not None),
                                 ("cpu", spec.limits.cpus is not None)) if on)


def make_cgroup(run: Runner, spec: Spec) -> Cgroup:
    """Steps: the container's cgroup (:func:`cgroup_controllers`) and its limits; undo: kill
    what is left, remove it."""
    cg = cgroup_recipe.create_cgroup(run, spec.name, cgroup_controllers(spec))
    cgroup_recipe.set_limits(run, cg, spec.limits)
    return cg


def flags_for(spec: Spec) -> int:
    """The namespaces of a container: mount, UTS, IPC, PID, cgroup (+ network with --net)."""
    flags = sc.CLONE_NEWNS | sc.CLONE_NEWUTS | sc.CLONE_NEWIPC | sc.CLONE_NEWPID | sc.CLONE_NEWCGROUP
    return flags | (sc.CLONE_NEWNET if spec.net else 0)


def unshare_display(spec: Spec) -> str:
    """The util-linux command line that makes the same namespaces."""
    opts = "--mount --uts --ipc --pid --cgroup" + (" --net" if spec.net else "")
    return f"unshare {opts} --fork --kill-child --propagation slave -- (PID 1: the steps below)"


# --- steps inside (run by PID 1 before the exec; printed by --explain) -------------------------

def make_rslave(run: Runner) -> None:
    """Step: make every mount rslave, so nothing we mount propagates to the host."""
    run.run(Step("make / rslave: host mounts still reach us, ours never reach the host",
                 argv=["mount", "--make-rslave", "/"],
                 native=lambda: sc.make_propagation("/", "slave", recursive=True)))


def mount_proc(run: Runner, root: str) -> None:
    """Step: mount a /proc that shows only the new PID namespace."""
    target = os.path.join(root, "proc")
    flags = sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC
    run.run(Step("mount /proc of the new PID namespace",
                 argv=["mount", "-t", "proc", "-o", "nosuid,nodev,noexec", "proc", target],
                 native=lambda: sc.mount("proc", target, "proc", flags)))


def mount_dev(run: Runner, root: str) -> None:
    """Steps: a tmpfs /dev with null, zero, full, random, urandom, tty and the fd links."""
    dev = os.path.join(root, "dev")
    run.run(Step("mount a small tmpfs on /dev",
                 argv=["mount", "-t", "tmpfs", "-o", "nosuid,mode=755,size=65536k", "tmpfs", dev],
                 native=lambda: sc.mount("tmpfs", dev, "tmpfs", sc.MS_NOSUID, "mode=755,size=65536k")))

    def nodes() -> None:
        for name, major, minor in DEVICES:
            path = os.path.join(dev, name)
            os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(major, minor))
            os.chmod(path, 0o666)
        for name, target in DEV_LINKS:
            os.symlink(target, os.path.join(dev, name))
        os.mkdir(os.path.join(dev, "shm"), 0o1777)
        os.chmod(os.path.join(dev, "shm"), 0o1777)

    shown = "; ".join(f"mknod -m 666 {dev}/{n} c {a} {b}" for n, a, b in DEVICES)
    shown += "; " + "; ".join(f"ln -s {t} {dev}/{n}" for n, t in DEV_LINKS)
    run.run(Step("make the device nodes and links", display=shown, native=nodes))


def set_hostname(run: Runner, name: str) -> None:
    """Step: the container's hostname (its own UTS namespace)."""
    run.run(Step(f"set the hostname to {name!r}", argv=["hostname", name],
                 native=lambda: sc.sethostname(name)))


def loopback_up(run: Runner) -> None:
    """Step: bring ``lo`` up in the new network namespace."""
    run.run(Step("bring lo up in the new network namespace", argv=["ip", "link", "set", "lo", "up"],
                 native=_lo_up))


def _lo_up() -> None:
    import fcntl
    import socket
    import struct
    siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        req = struct.pack("16sH", b"lo", 0)
        flags = struct.unpack("16sH", fcntl.ioctl(s, siocgifflags, req + b"\0" * 22)[:18])[1]
        try:
            fcntl.ioctl(s, siocsifflags, struct.pack("16sH", b"lo", flags | iff_up) + b"\0" * 22)
        except OSError as exc:
            raise SyscallError.from_oserror("ioctl(SIOCSIFFLAGS, lo)", exc) from None


def pivot_into(run: Runner, new_root: str) -> None:
    """Steps: ``pivot_root . .`` into ``new_root``, then make the old root rslave and detach
    it (runc's sequence): the host's tree is no longer reachable from inside."""
    def shell(argv: list[str]) -> None:
        os.chdir(new_root)
        nshell.run(argv)

    def native() -> None:
        fd = os.open(new_root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fchdir(fd)
        finally:
            os.close(fd)
        sc.pivot_root(".", ".")

    run.run(Step(f"pivot_root into {new_root} (the old root is stacked on top of it)",
                 argv=["pivot_root", ".", "."], display=f"cd {new_root} && pivot_root . .",
                 native=native, shell=shell))

    def detach() -> None:
        sc.make_propagation(".", "slave", recursive=True)
        sc.umount(".", sc.MNT_DETACH)
        os.chdir("/")

    run.run(Step("make the old root rslave and detach it, then cd /",
                 display="mount --make-rslave . && umount -l . && cd /", native=detach))


def join_cgroup(run: Runner, cg: Cgroup) -> None:
    """Steps (run by PID 1 itself): move into the container's cgroup, then unshare a cgroup
    namespace rooted there.

    On v1 a single-threaded process writes ``0`` into ``tasks``: the kernel moves just the
    caller and skips the global threadgroup lock whose RCU grace period makes every
    ``echo PID > cgroup.procs`` cost 5-20 ms. On v2, ``echo 0 > cgroup.procs``.
    """
    for ctrl, d in cgroup_recipe._dirs_with_names(cg):
        path = os.path.join(d, "tasks" if cg.version == 1 else "cgroup.procs")
        run.run(cgroup_recipe.write_step(path, 0, f"PID 1 moves itself into {cg.name} ({ctrl})"))
    run.run(Step("unshare a cgroup namespace: the container's cgroup is its /",
                 argv=None, display="unshare --cgroup",
                 native=lambda: sc.unshare(sc.CLONE_NEWCGROUP)))


def inside_steps(run: Runner, spec: Spec, ct: Container) -> None:
    """Everything PID 1 does before the exec (see the module docstring, 4 to 6)."""
    join_cgroup(run, ct.cgroup)
    make_rslave(run)
    mount_overlay(run, [ct.rootfs], ct.upper, ct.work, ct.merged, undo=False)
    mount_proc(run, ct.merged)
    mount_dev(run, ct.merged)
    set_hostname(run, spec.hostname or spec.name)
    if spec.net:
        loopback_up(run)
    pivot_into(run, ct.merged)


# --- the processes ------------------------------------------------------------------------------

def _send(fd: int, kind: bytes, exc: NsrError) -> None:
    try:
        os.write(fd, kind + pickle.dumps(exc))
    except OSError:
        pass


def _set_pdeathsig(expected_parent: int | None) -> None:
    """Die with SIGKILL when the parent dies (and at once if it is gone already; PID 1 of a
    new PID namespace sees its parent as 0, so there ``expected_parent`` is None)."""
    pr_set_pdeathsig = 1
    sc.LIBC.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
    if expected_parent is not None and os.getppid() != expected_parent:
        os._exit(137)


def _child_exec(argv: list[str], env: dict[str, str], report_w: int,
                fds: tuple[int | None, int | None, int | None], path: str | None = None) -> None:
    """The command's process: default signals, stdio, exec (127/126 with a reason if not)."""
    code = 127
    try:
        for sig in FORWARDED + (signal.SIGCHLD, signal.SIGPIPE):
            signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, set())
        for target, fd in enumerate(fds):
            if fd is not None:
                os.dup2(fd, target)
        try:
            if path:   # resolved inside the rootfs already: one execve, not one per PATH dir
                try:
                    os.execve(path, argv, env)
                except FileNotFoundError:
                    pass
            os.execvpe(argv[0], argv, env)
        except FileNotFoundError:
            _send(report_w, b"N", CommandNotFound(
                f"command {argv[0]!r} not found in the container's root filesystem",
                hint=f"the container's PATH is {PATH}"))
        except PermissionError:
            code = 126
            _send(report_w, b"N", CommandNotExecutable(
                f"command {argv[0]!r} is not executable in the container",
                hint="chmod +x it, or run it through sh"))
        except OSError as exc:
            code = 126
            _send(report_w, b"N", SyscallError.from_oserror(f"execve({argv[0]!r})", exc))
    finally:
        os._exit(code)


def _pid1(run: Runner, spec: Spec, ct: Container, report_w: int,
          fds: tuple[int | None, int | None, int | None]) -> int:
    """PID 1 of the container: the inside steps (cgroup first), then fork+exec the command,
    reap and forward signals until it ends."""
    handler = lambda *_: None  # noqa: E731 -- PID 1 ignores SIG_DFL signals: install handlers
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    try:
        inside_steps(run, spec, ct)
    except NsrError as exc:
        _send(report_w, b"E", exc)
        return SETUP_FAILED
    except OSError as exc:
        _send(report_w, b"E", SyscallError.from_oserror("container setup", exc))
        return SETUP_FAILED
    waited = set(FORWARDED) | {signal.SIGCHLD}
    for sig in waited:
        signal.signal(sig, handler)
    signal.pthread_sigmask(signal.SIG_BLOCK, waited)
    env = {"PATH": PATH, "HOME": "/root", "HOSTNAME": spec.hostname or spec.name,
           "TERM": os.environ.get("TERM", "xterm"), "container": "nsrecipes"}
    child = process.fork()
    if child == 0:
        _child_exec(spec.argv, env, report_w, fds, spec.command_path)
    os.close(report_w)
    return _reap_until(child, waited)


def _reap_until(child: int, waited: set[int]) -> int:
    """Reap every process that ends (orphans are ours), forward signals to ``child``, and
    return ``child``'s exit status once it ends (128+N for signal N)."""
    while True:
        info = signal.sigwaitinfo(waited)
        if info.si_signo != signal.SIGCHLD:
            try:
                os.kill(child, info.si_signo)
            except ProcessLookupError:
                pass
            continue
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return 0
            if pid == 0:
                break
            if pid == child:
                return _code(status)


def _code(status: int) -> int:
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


def _outside(spec: Spec, ct: Container, run: Runner, pipes: dict[str, int],
             fds: tuple[int | None, int | None, int | None], parent: int) -> int:
    """The forked process outside: unshare, fork PID 1 and tell the tool its PID, then
    forward signals to it and pass its exit status up."""
    _set_pdeathsig(parent)
    try:
        sc.unshare(flags_for(spec) & ~sc.CLONE_NEWCGROUP)
    except NsrError as exc:
        _send(pipes["report_w"], b"E", exc)
        return SETUP_FAILED
    waited = set(FORWARDED) | {signal.SIGCHLD}
    signal.pthread_sigmask(signal.SIG_BLOCK, waited)
    life_r, life_w = os.pipe()   # EOF on life_r: this process is gone
    pid1 = process.fork()
    if pid1 == 0:
        code = SETUP_FAILED
        try:
            os.close(pipes["pid_w"])
            os.close(life_w)
            _set_pdeathsig(None)
            os.set_blocking(life_r, False)
            try:
                if os.read(life_r, 1) == b"":   # died before PR_SET_PDEATHSIG took effect
                    os._exit(137)
            except BlockingIOError:
                pass
            os.close(life_r)
            code = _pid1(run, spec, ct, pipes["report_w"], fds)
        finally:
            os._exit(code)
    os.close(life_r)
    os.write(pipes["pid_w"], pid1.to_bytes(8, "little"))
    for name in ("pid_w", "report_w"):
        os.close(pipes[name])
    for sig in FORWARDED:
        signal.signal(sig, lambda *_: None)
    return _reap_until(pid1, waited)


def start(run: Runner, spec: Spec, ct: Container,
          fds: tuple[int | None, int | None, int | None] = (None, None, None)) -> Container:
    """Steps: fork, unshare, fork PID 1, which joins the cgroup, does the inside steps and
    starts the command; the tool records the PIDs meanwhile. Returns the container with
    ``pid`` (the process outside) and ``pid1`` set."""
    if run.explain:
        run.run(Step(f"fork, unshare the namespaces ({sc.flag_names(flags_for(spec) & ~sc.CLONE_NEWCGROUP)}) "
                     "and fork PID 1", display=unshare_display(spec), native=lambda: None))
        record(run, ct, spec)
        inside_steps(run, spec, ct)
        run.run(Step(f"fork and exec {' '.join(spec.argv)!r}; PID 1 reaps zombies and "
                     "forwards signals until it exits", display=" ".join(spec.argv),
                     native=lambda: None))
        return ct
    pipes: dict[str, int] = {}
    pipes["pid_r"], pipes["pid_w"] = os.pipe()
    pipes["report_r"], pipes["report_w"] = os.pipe()
    inner = Runner(backend=run.backend, explain=False, keep=True, out=run.out)
    sys.stdout.flush()
    sys.stderr.flush()
    me = os.getpid()
    pid = process.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = SETUP_FAILED
        try:
            for name in ("pid_r", "report_r"):
                os.close(pipes[name])
            code = _outside(spec, ct, inner, pipes, fds, me)
        except BaseException:
            code = SETUP_FAILED
        finally:
            os._exit(code)
    for name in ("pid_w", "report_w"):
        os.close(pipes.pop(name))
    ct.pid, ct.report_r = pid, pipes.pop("report_r")
    try:
        run.defer(Step(f"stop the container's processes (pid {pid})", argv=["kill", "-KILL", pid],
                       native=lambda: _kill_reap(ct), shell=lambda _a: _kill_reap(ct)))
        raw = process.read_all(pipes["pid_r"])
        if len(raw) != 8:
            wait(run, ct)    # raises what went wrong (e.g. unshare refused)
            raise NsrError("the container's first process died while starting",
                           hint="see the kernel log (dmesg)")
        ct.pid1 = int.from_bytes(raw, "little")
        record(run, ct, spec)
    finally:
        os.close(pipes.pop("pid_r"))
    return ct


def _kill_reap(ct: Container) -> None:
    if ct.reaped or not ct.pid:
        return
    try:
        os.kill(ct.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        os.waitpid(ct.pid, 0)
    except ChildProcessError:
        pass
    ct.reaped = True
    if ct.report_r >= 0:
        os.close(ct.report_r)
        ct.report_r = -1


def wait(run: Runner, ct: Container) -> int:
    """Wait for the container to end; its command's exit status (128+N for a signal).

    Raises what went wrong inside (a failed setup step, a command that could not be run).
    """
    if run.explain:
        return 0
    import threading
    forwarding = threading.current_thread() is threading.main_thread()
    saved = {}
    if forwarding:  # the tool passes SIGTERM, SIGINT, ... on, as PID 1 does
        for sig in FORWARDED:
            saved[sig] = signal.signal(sig, lambda signo, _f: _forward(ct, signo))
    try:
        _, status = os.waitpid(ct.pid, 0)
    except ChildProcessError:
        status = 0
    finally:
        ct.reaped = True
        for sig, old in saved.items():
            signal.signal(sig, old)
    code = _code(status)
    data = b""
    try:
        while True:
            chunk = os.read(ct.report_r, 65536)
            if not chunk:
                break
            data += chunk
    finally:
        os.close(ct.report_r)
        ct.report_r = -1
    if data:
        err = pickle.loads(data[1:])
        raise err
    return code


def _forward(ct: Container, signo: int) -> None:
    if not ct.reaped:
        try:
            os.kill(ct.pid, signo)
        except ProcessLookupError:
            pass


def run_container(run: Runner, argv: Sequence[str], rootfs: str | None = None,
                  memory: str | int | None = None, pids: str | int | None = None,
                  cpus: str | float | None = None, hostname: str | None = None,
                  net: bool = False, rm: bool = True, name: str | None = None,
                  stdin: int | None = None, stdout: int | None = None,
                  stderr: int | None = None) -> int:
    """``container-run``: run ``argv`` in a new container and return its exit status.

    ``stdin``/``stdout``/``stderr`` are file descriptors for the command (default: ours).
    Bad input raises before anything is made; with ``rm`` nothing is left afterwards.
    """
    spec = make_spec(argv, rootfs, memory, pids, cpus, hostname, net, rm, name)
    fs = upperfs.plan_upper(state_dir(create=False))   # refused before anything is made
    upperfs.check_lower(spec.rootfs or rootfs_recipe.cache_dir(), "the rootfs")
    cgroupfs.require(cgroup_controllers(spec))   # a controller we cannot use: fail first
    if spec.rootfs is None:
        default = rootfs_recipe.default_path()
        if os.path.isfile(os.path.join(default, "bin", "busybox")):
            spec.command_path = find_command(default, spec.argv[0])
        else:
            if run.explain:
                run.heading("build the busybox root filesystem (once; it is cached)")
        spec.rootfs = rootfs_recipe.ensure_default(run)
        if not run.explain:
            spec.command_path = find_command(spec.rootfs, spec.argv[0])
    if run.explain:  # the command's own output is all a real run prints
        run.heading(f"{SECTION}: {' '.join(spec.argv)}")
    try:
        cdir = make_dirs(run, spec, fs)
        cg = make_cgroup(run, spec)
        ct = Container(spec.name, cdir, cg, spec.rootfs)
        start(run, spec, ct, (stdin, stdout, stderr))
        code = wait(run, ct)
    except BaseException:
        run.undo()
        raise
    errors = run.undo()
    if errors:
        raise errors[0]
    return code


# --- leftovers ----------------------------------------------------------------------------------

def _states() -> list[dict]:
    base = state_dir(create=False)
    if not os.path.isdir(base):
        return []
    out = []
    for entry in sorted(os.listdir(base)):
        if entry.startswith(f"{PREFIX}-c-") and os.path.isdir(os.path.join(base, entry)):
            data = read_json(os.path.join(base, entry, "state.json")) or {}
            data.setdefault("name", entry)
            data["dir"] = os.path.join(base, entry)
            out.append(data)
    return out


def recorded_cgroups() -> set[str]:
    """Cgroup directories that belong to recorded containers (their leftovers remove them)."""
    return {d for s in _states() for d in s.get("cgroup", [])}


def _remove_container(state: dict) -> None:
    for key in ("pid", "pid1"):     # only if it is still the same process (start time)
        pid, start_time = state.get(key), state.get(f"{key}_starttime" if key == "pid1" else "starttime")
        if pid and start_time is not None and process.start_time(pid) == start_time:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    for d in reversed(state.get("cgroup", [])):
        real = os.path.realpath(d)
        if real.startswith(cgroupfs.ROOT + "/") and os.path.basename(real).startswith(PREFIX):
            cgroupfs.remove_dir(real)
    remove_tree(state["dir"])
    prune()


def leftovers() -> list[Leftover]:
    """Containers recorded under the state directory (``nsr-c-*``): their processes, cgroups,
    mounts and directories."""
    return [Leftover("container", s["name"], lambda s=s: _remove_container(s)) for s in _states()]
