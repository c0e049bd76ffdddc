"""The steps PID 1 of a container runs before the command (and ``--explain`` prints).

In the container's own mount namespace, on the host's tree made rslave first:

1. the overlay (rootfs as lowerdir) on ``merged``; a mountpoint the rootfs lacks (/proc,
   /dev, a volume's, the working directory) is made in the overlay, its path resolved
   inside the rootfs (an image's absolute symlink never reaches the host's directories);
2. /proc of the new PID namespace, the hostname (and domainname), ``lo`` up (``--net``):
   independent of each other, so their commands run side by side; a tmpfs /dev with the
   usual nodes;
3. ``--volume``: recursive binds (``mount --rbind``); ``:ro`` makes every mount of the tree
   read-only with one ``mount_setattr(AT_RECURSIVE)`` -- ``mount -o remount,bind,ro`` would
   leave the submounts writable, and util-linux 2.38 has no command for it, so this one
   step is a system call on both backends; ``--tmpfs``: a tmpfs each;
4. ``--read-only``: the overlay remounted read-only (its submounts keep their own flags);
5. hostname, domainname, ``lo`` up (``--net``);
6. ``pivot_root . .`` into ``merged``; the old root made rslave and detached;
6. last, with every helper of the setup (the shell backend's commands and the threads of
   the ``sh`` package that runs them) gone: PID 1 moves itself into the container's cgroup
   through a file it opened before ``pivot_root``, and unshares a cgroup namespace. So
   ``--pids N`` counts the container's own processes only: PID 1 and what the command starts.
"""
from __future__ import annotations

import os
import stat
import threading
import time

from nsutil import mountattr
from nsutil import shell as nshell
from nsutil import syscalls as sc
from nsutil.backend import Runner, Step
from nsutil.cgroupfs import Cgroup
from nsutil.errors import SyscallError

from recipes import cgroup as cgroup_recipe
from recipes.container import rootfs as rootfs_recipe
from recipes.container import rootless as rootless_recipe
from recipes.container.spec import Spec, Tmpfs, Volume
from recipes.container.state import Container
from recipes.cow import mount_overlay

DEVICES = (("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8),
           ("urandom", 1, 9), ("tty", 5, 0))
READ_ONLY_REMOUNT = sc.MS_REMOUNT | sc.MS_BIND | sc.MS_RDONLY
DEV_LINKS = (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
             ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2"))


def make_rslave(run: Runner) -> None:
    """Step: make every mount rslave, so nothing we mount propagates to the host."""
    run.run(Step("make / rslave: host mounts still reach us, ours never reach the host",
                 argv=["mount", "--make-rslave", "/"],
                 native=lambda: sc.make_propagation("/", "slave", recursive=True)))


def ensure_mountpoint(run: Runner, merged: str, rootfs: str, path: str, what: str,
                      is_file: bool = False) -> str:
    """Step (only where it is missing): make ``path`` of the container in the overlay (a
    directory, or an empty file for a file volume); returns its host path below ``merged``."""
    target = rootfs_recipe.join_in(merged, path)
    seen = rootfs_recipe.resolve_in(rootfs, path) if run.explain else target
    if seen is not None and os.path.lexists(seen):
        return target
    if is_file:
        ensure_mountpoint(run, merged, rootfs, os.path.dirname(path), "the directory of " + what)
        run.run(Step(f"make {what} {path} (an empty file) in the overlay", argv=["touch", target],
                     native=lambda: os.close(os.open(target, os.O_CREAT | os.O_WRONLY, 0o644))))
    else:
        run.run(Step(f"make {what} {path} in the overlay (the rootfs lacks it)",
                     argv=["mkdir", "-p", target], native=lambda: os.makedirs(target, 0o755, True)))
    return target


def proc_step(target: str) -> Step:
    """Step: mount a /proc that shows only the new PID namespace."""
    flags = sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC
    return Step("mount /proc of the new PID namespace",
                argv=["mount", "-t", "proc", "-o", "nosuid,nodev,noexec", "proc", target],
                native=lambda: sc.mount("proc", target, "proc", flags))


def dev_tmpfs_step(dev: str) -> Step:
    """Step: a small tmpfs on /dev (mode 755: a sticky, world-writable /dev would refuse
    O_CREAT on nodes of another owner)."""
    return Step("mount a small tmpfs on /dev",
                argv=["mount", "-t", "tmpfs", "-o", "nosuid,mode=755,size=65536k", "tmpfs", dev],
                native=lambda: sc.mount("tmpfs", dev, "tmpfs", sc.MS_NOSUID,
                                        "mode=755,size=65536k"))


def make_device_nodes(run: Runner, dev: str) -> None:
    """Step: in the tmpfs /dev, null, zero, full, random, urandom, tty and the fd links."""
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


def bind_volume(run: Runner, target: str, vol: Volume) -> None:
    """Steps: bind ``vol.source`` on ``target`` with everything mounted below it (MS_BIND |
    MS_REC); with ``ro``, every mount of that tree read-only."""
    run.run(Step(f"bind {vol.source} on {vol.target}, with its submounts (--rbind)",
                 argv=["mount", "--rbind", vol.source, target],
                 native=lambda: sc.mount(vol.source, target, None, sc.MS_BIND | sc.MS_REC)))
    if vol.readonly:
        run.run(Step(f"make {vol.target} rprivate: a mount the host adds below {vol.source} "
                     "later must not arrive writable", argv=["mount", "--make-rprivate", target],
                     native=lambda: sc.make_propagation(target, "private", recursive=True)))
        run.run(Step(f"make {vol.target} and every submount read-only (a system call on both "
                     "backends: util-linux 2.38 has no recursive read-only remount)",
                     display=f"mount_setattr(AT_FDCWD, {target}, AT_RECURSIVE, "
                             "{attr_set=MOUNT_ATTR_RDONLY})",
                     native=lambda: mountattr.set_readonly(target, recursive=True)))


def mount_tmpfs(run: Runner, target: str, mount: Tmpfs) -> None:
    """Step: an empty tmpfs on ``target`` (nosuid, nodev; ``ro`` read-only)."""
    data = mount.options()
    flags = sc.MS_NOSUID | sc.MS_NODEV | (sc.MS_RDONLY if mount.readonly else 0)
    opts = "nosuid,nodev," + ("ro," if mount.readonly else "") + data
    ro = ", read-only" if mount.readonly else ""
    run.run(Step(f"mount a tmpfs on {mount.target} ({data}{ro})",
                 argv=["mount", "-t", "tmpfs", "-o", opts, "tmpfs", target],
                 native=lambda: sc.mount("tmpfs", target, "tmpfs", flags, data)))


def mount_all(run: Runner, spec: Spec, merged: str, rootfs: str) -> None:
    """Steps: every ``--volume`` and ``--tmpfs``, parents first, each on its mountpoint."""
    for m in spec.mounts():
        is_file = isinstance(m, Volume) and not os.path.isdir(m.source)
        what = "the mountpoint of the volume" if isinstance(m, Volume) else "the mountpoint"
        target = ensure_mountpoint(run, merged, rootfs, m.target, what, is_file)
        if isinstance(m, Volume):
            bind_volume(run, target, m)
        else:
            mount_tmpfs(run, target, m)


def make_root_readonly(run: Runner, merged: str) -> None:
    """Step (``--read-only``): remount the overlay read-only, as runc does: a write to the
    rootfs fails with EROFS; /proc, /dev, volumes and tmpfs mounts keep their own flags."""
    run.run(Step("remount the rootfs (the overlay) read-only: writes fail with EROFS",
                 argv=["mount", "-o", "remount,bind,ro", merged],
                 native=lambda: sc.mount(None, merged, None, READ_ONLY_REMOUNT)))


def hostname_step(name: str) -> Step:
    """Step: the container's hostname (its own UTS namespace)."""
    return Step(f"set the hostname to {name!r}", argv=["hostname", name],
                native=lambda: sc.sethostname(name))


def domainname_step(name: str) -> Step:
    """Step: the container's NIS domain name (its own UTS namespace, as ``docker run
    --domainname``)."""
    return Step(f"set the domainname to {name!r}", argv=["domainname", name],
                native=lambda: sc.setdomainname(name))


def loopback_step() -> Step:
    """Step: bring ``lo`` up in the new network namespace."""
    return Step("bring lo up in the new network namespace", argv=["ip", "link", "set", "lo", "up"],
                native=_lo_up)


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


# --- the cgroup, entered last --------------------------------------------------------------------

def _cgroup_files(cg: Cgroup) -> list[tuple[str, str]]:
    """(what, file) that PID 1 writes ``0`` into to move itself: v1 ``tasks`` (a
    single-threaded caller moves alone, skipping the threadgroup lock whose RCU grace period
    costs 5-20 ms per ``cgroup.procs`` write), v2 ``cgroup.procs``."""
    return [(ctrl, os.path.join(d, "tasks" if cg.version == 1 else "cgroup.procs"))
            for ctrl, d in cgroup_recipe.dirs_with_names(cg)]


def open_cgroup(run: Runner, cg: Cgroup) -> list[int]:
    """Step (before ``pivot_root``, after which the host's /sys is out of reach): open the
    files that move PID 1 into the container's cgroup; returns the descriptors."""
    files = _cgroup_files(cg)

    def native() -> list[int]:
        try:
            return [os.open(path, os.O_WRONLY | os.O_CLOEXEC) for _ctrl, path in files]
        except OSError as exc:
            raise SyscallError.from_oserror("open(cgroup file)", exc) from None

    shown = "; ".join(f"exec {3 + i}> {path}" for i, (_c, path) in enumerate(files))
    return run.run(Step(f"open the files that move PID 1 into {cg.name} (the path is gone "
                        "after pivot_root)", display=shown, native=native, placeholder=[]))


def _wait_single_threaded(timeout: float = 5.0) -> None:
    """Let the threads the ``sh`` package started end (they would count toward pids.max,
    and on v1 ``tasks`` moves only the calling thread)."""
    deadline = time.monotonic() + timeout
    for t in threading.enumerate():
        if t is not threading.current_thread():
            t.join(max(0.0, deadline - time.monotonic()))
    while len(os.listdir("/proc/self/task")) > 1 and time.monotonic() < deadline:
        time.sleep(0.001)


def join_cgroup(run: Runner, cg: Cgroup, fds: list[int]) -> None:
    """Steps (PID 1, the last before the command): once the setup's helpers are gone, move
    into the container's cgroup through ``fds`` (see :func:`open_cgroup`), then unshare a
    cgroup namespace rooted there."""
    def native() -> None:
        _wait_single_threaded()
        try:
            for fd in fds:
                os.write(fd, b"0")
        except OSError as exc:
            raise SyscallError.from_oserror(f"write(0) to the cgroup of {cg.name}", exc) from None
        finally:
            for fd in fds:
                os.close(fd)

    shown = "; ".join(f"echo 0 >&{3 + i}" for i in range(len(_cgroup_files(cg))))
    run.run(Step(f"PID 1 moves itself into {cg.name}, now that the setup's helper processes and "
                 "threads are gone (--pids counts only the container's own)", display=shown,
                 native=native))
    unshare_cgroupns(run)


def unshare_cgroupns(run: Runner) -> None:
    """Step: unshare a cgroup namespace rooted at the cgroup this process is in."""
    run.run(Step("unshare a cgroup namespace: the container's cgroup is its /",
                 argv=None, display="unshare --cgroup",
                 native=lambda: sc.unshare(sc.CLONE_NEWCGROUP)))


def proc_and_names(run: Runner, spec: Spec, proc: str) -> None:
    """Steps that do not depend on each other -- /proc, the hostname (and domainname),
    ``lo`` up (``--net``): a mount point and namespaces of their own, so on the shell backend
    their commands run side by side, as a script runs them with ``&`` and ``wait``. (One
    mount at a time: two side by side would be listed in /proc/self/mountinfo in whichever
    order they happened to finish.)"""
    steps = [proc_step(proc), hostname_step(spec.hostname or spec.name)]
    if spec.domainname:
        steps.append(domainname_step(spec.domainname))
    if spec.net:
        steps.append(loopback_step())
    run.run_together(steps)


def inside_steps(run: Runner, spec: Spec, ct: Container) -> None:
    """Everything PID 1 does before the command (see the module docstring)."""
    make_rslave(run)
    mount_overlay(run, spec.lowers or [ct.rootfs], ct.upper, ct.work, ct.merged, undo=False,
                  cwd=spec.lowers_cwd, via=spec.lowers_via)
    proc = ensure_mountpoint(run, ct.merged, ct.rootfs, "/proc", "the mountpoint")
    dev = ensure_mountpoint(run, ct.merged, ct.rootfs, "/dev", "the mountpoint")
    proc_and_names(run, spec, proc)
    run.run(dev_tmpfs_step(dev))
    if spec.ids is not None:    # without root: no mknod, the host's nodes bound instead
        rootless_recipe.mount_dev_binds(run, dev)
    else:
        make_device_nodes(run, dev)
    mount_all(run, spec, ct.merged, ct.rootfs)
    if spec.workdir:
        ensure_mountpoint(run, ct.merged, ct.rootfs, spec.workdir, "the working directory")
    if spec.read_only:
        make_root_readonly(run, ct.merged)
    if ct.cgroup is None:       # without root and no delegated cgroup: none of its own
        pivot_into(run, ct.merged)
        unshare_cgroupns(run)
        return
    fds = open_cgroup(run, ct.cgroup)
    pivot_into(run, ct.merged)
    join_cgroup(run, ct.cgroup, fds)
