"""A container without root, as podman and bubblewrap make one.

* **The user namespace comes first** and owns every other one. Only the user, mapped to root
  inside (``unshare --user --map-root-user``), unless the command is to run as another id
  (``--user 1000``): then uids and gids 1..65535 inside map to the user's ``/etc/subuid`` and
  ``/etc/subgid`` range through newuidmap/newgidmap (:mod:`recipes.common.userns`); without
  them, one line names what is missing.
* **overlayfs with userxattr** (Linux 5.11+): the overlay's own metadata goes to
  ``user.overlay.*`` xattrs; an older kernel is refused in one line.
* **/dev by bind mounts**, as bubblewrap's ``--dev``: a user namespace may not mknod device
  nodes, so each of null, zero, full, random, urandom and tty is an empty file on the tmpfs
  with the host's node bound on it.
* **--net** is a network namespace of its own with only ``lo``: isolated. Reaching outside
  needs a user-space network stack (pasta, slirp4netns), which is out of scope here.
* **Limits only in a cgroup delegated to the user** (:mod:`nsutil.cgroupdeleg`); without one
  the container gets no cgroup, and a limit asked for is one line with the systemd-run hint.
"""
from __future__ import annotations

import os

from nsutil import cgroupdeleg
from nsutil import shell as nshell
from nsutil.backend import Runner, Step
from nsutil.errors import NsrError
from nsutil.state import prune
from nsutil import syscalls as sc

from recipes.common import upperfs
from recipes.common import userns
from recipes.container.spec import Spec
from recipes.cow import remove_tree, require_userxattr

DEVICES = ("null", "zero", "full", "random", "urandom", "tty")


def _limit_words(spec: Spec) -> str:
    limits = spec.limits
    memory = limits.memory or 0
    shown = f"{memory >> 20}M" if memory and memory % (1 << 20) == 0 else str(memory)
    return " ".join(f"--{name} {value}" for name, value, on in (
        ("memory", shown, limits.memory is not None),
        ("pids", limits.pids, limits.pids is not None),
        ("cpus", limits.cpus, limits.cpus is not None)) if on)


def controllers(spec: Spec) -> tuple[str, ...]:
    """The controllers of a rootless container's cgroup: those of the limits asked for."""
    limits = spec.limits
    return tuple(c for c, on in (("memory", limits.memory is not None),
                                 ("pids", limits.pids is not None),
                                 ("cpu", limits.cpus is not None)) if on)


def wants_cgroup(spec: Spec) -> bool:
    """Whether the container gets a cgroup: with limits (checked delegated already), or where
    a cgroup is delegated to the user anyway (a bare v2 cgroup groups and kills its processes)."""
    return bool(controllers(spec)) or cgroupdeleg.find() is not None


def check(spec: Spec, fs: upperfs.Fs) -> None:
    """Before anything is made, without root: the kernel's overlayfs, a place for the upper,
    the delegated cgroup a limit needs, and the ids ``--user`` needs (sets ``spec.ids``)."""
    require_userxattr("container-run without root")
    if upperfs.needs_tmpfs(fs):
        raise NsrError(f"container-run without root: the container's upper would be on "
                       f"{fs.describe()}, which overlayfs refuses as an upper, and a user cannot "
                       "mount a tmpfs there", hint="point XDG_RUNTIME_DIR (or NSR_STATE_DIR) at "
                       "a tmpfs of your own, e.g. /run/user/UID or /dev/shm/NAME")
    wanted = controllers(spec)
    if wanted:
        cgroupdeleg.require(f"container-run {_limit_words(spec)}", wanted)
    ids = [0]
    if spec.user is not None:
        gid = spec.user.gid if spec.user.gid is not None else spec.user.uid
        ids = [spec.user.uid, gid]
    shown = f"container-run --user {spec.user.uid}" if spec.user is not None else "container-run"
    spec.ids = userns.plan_for(shown, ids)


def unshare_words(spec: Spec) -> str:
    """What ``unshare`` is given first for this container (the user namespace), or ''."""
    if spec.ids is None:
        return ""
    if spec.ids.helpers:
        return "--user (then newuidmap/newgidmap $PID, run by the tool: see below)"
    return "--user --map-root-user"


def explain_maps(run: Runner, spec: Spec) -> None:
    """Under --explain: the map step the tool runs once the first process made its user
    namespace (only with a subordinate range)."""
    if spec.ids is None or not spec.ids.helpers:
        return
    run.run(Step(f"map the container's user namespace: {spec.ids.describe()} (newuidmap and "
                 "newgidmap are setuid root and check /etc/subuid, /etc/subgid)",
                 display=userns.display(spec.ids), native=lambda: None))


def mount_dev_binds(run: Runner, dev: str) -> None:
    """Steps: in the tmpfs /dev, the host's device nodes bound on empty files, as
    bubblewrap's ``--dev`` does (mknod needs CAP_MKNOD in the host's user namespace), and the
    fd links."""
    targets = [os.path.join(dev, name) for name in DEVICES]

    def files() -> None:
        for path in targets:
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o666))
        for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                             ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):
            os.symlink(target, os.path.join(dev, name))
        os.mkdir(os.path.join(dev, "shm"), 0o1777)
        os.chmod(os.path.join(dev, "shm"), 0o1777)

    run.run(Step("make empty files for the device nodes, the fd links and shm",
                 display=f"touch {' '.join(targets)}; ln -s /proc/self/fd {dev}/fd; ...",
                 native=files))
    for name, path in zip(DEVICES, targets):
        run.run(_bind_step(f"/dev/{name}", path))


def _bind_step(host: str, path: str) -> Step:
    return Step(f"bind the host's {host} on it (a user namespace cannot mknod)",
                argv=["mount", "--bind", host, path],
                native=lambda: sc.mount(host, path, None, sc.MS_BIND))


def _remove_own(path: str) -> bool:
    """Where the user's own id is the only one mapped, every file of the container is the
    user's outside too: remove them here, without the fork of a user namespace, once the
    overlay's ``work/work`` (mode 000, the user's) is opened. False where something refuses
    (e.g. a directory the container made unreadable): the user namespace removes it then."""
    inner = os.path.join(path, "work", "work")
    try:
        if os.path.isdir(inner) and not os.path.islink(inner):
            os.chmod(inner, 0o700)
        remove_tree(path)
        return True
    except (NsrError, OSError):
        return False


def remove_step(path: str, ids: userns.IdPlan) -> Step:
    """Step: remove the container's directory from inside a user namespace with the
    container's maps, as ``podman unshare rm -rf`` does: the overlay's ``work/work`` (mode 000)
    and what the container's other ids wrote are root's there, not the user's outside."""
    words = "unshare --user --map-root-user" if not ids.helpers else (
        "unshare --user (newuidmap/newgidmap $PID as for the container)")
    argv = ["rm", "-rf", "--one-file-system", path]

    def native() -> None:
        if ids.helpers or not _remove_own(path):
            userns.call_mapped(ids, lambda: remove_tree(path), f"remove {path}")
        prune()

    def shell(_argv: list[str]) -> None:
        userns.call_mapped(ids, lambda: nshell.run(argv) and None, f"remove {path}")
        prune()

    return Step(f"remove the container directory {path}, in a user namespace with the "
                "container's maps (what its ids own is root's there)",
                argv=argv, display=f"{words} {' '.join(argv)}", native=native, shell=shell)
