"""The whole container: namespaces + cgroups + copy-on-write, started step by step.

The document's three principles composed the way ``docker run`` / runc compose them:

1. check the input (:mod:`recipes.container.spec`: limits, mounts, user, ... and that the
   command exists in the rootfs -- the only thing a rootfs must have);
2. make the container's directory (overlay ``upper``, ``work``, ``merged``; where the state
   directory's filesystem cannot hold an upper, e.g. an overlayfs, on a tmpfs mounted on
   it, as bubblewrap's ``--tmp-overlay`` does: :mod:`recipes.common.upperfs`);
3. make a cgroup ``nsr-c-ID`` and write the limits (:mod:`recipes.cgroup`);
4. as root, unshare a PID namespace for the tool's next child and fork PID 1 into it, which
   unshares mount, UTS, IPC (and with ``--net`` network) namespaces; without root, fork a
   process outside that makes the user namespace first, unshares the others and forks
   PID 1. The tool records the PIDs for ``cleanup`` (:mod:`recipes.container.run`,
   :mod:`recipes.container.state`). PID 1
5. makes ``/`` rslave, mounts the overlay (rootfs as lowerdir) on ``merged``, ``/proc``, a
   tmpfs ``/dev`` with null, zero, full, random, urandom, tty, the ``--volume`` binds and
   ``--tmpfs`` mounts, remounts the overlay read-only (``--read-only``), sets the hostname
   and domainname, brings ``lo`` up in a new netns (:mod:`recipes.container.inside`),
6. ``pivot_root . .`` into ``merged``, makes the old root rslave and detaches it,
7. moves itself into the cgroup (``echo 0 > tasks`` through a file opened before the
   pivot) and unshares a cgroup namespace -- last, once the setup's helper processes and
   threads are gone, so ``--pids 2`` is enough for PID 1 and the command;
8. starts the command (``posix_spawn`` where nothing runs between fork and exec, else a
   fork), which becomes ``--user``, enters ``--workdir`` and execs with
   ``--env``; PID 1 stays, reaps every zombie (orphans are reparented to it) and forwards
   SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1/2, SIGWINCH to the command (the tool and a
   process outside forward them too);
9. the exit status comes back (128+N for a signal; 137 past ``--timeout``); with ``rm`` (the
   default) the cgroup and the container's directory are removed; without it the cgroup
   goes and the exit code is recorded: the container is ``exited``, kept until
   ``container-rm`` (``cleanup`` keeps it too). If the tool dies, everything inside dies
   with it (PR_SET_PDEATHSIG): a ``dead`` container, which ``cleanup`` removes.

Every step is a recipe call, so ``--explain`` prints the whole sequence, and a script can
compose the same steps differently. The steps of 5 to 7 run inside the new namespaces
(in PID 1, before the exec) with the runner's backend: ``mount ...``/``hostname``/
``ip link``/``pivot_root`` commands or the syscalls. The overlay and /proc are mounted in
the container's own mount namespace only, so they vanish with it: the host never sees them.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Sequence

from nsutil import cgroupfs
from nsutil import mountattr
from nsutil import timeline
from nsutil import shell as nshell
from nsutil.backend import Runner, Step
from nsutil.cgroupfs import Cgroup
from nsutil.errors import NsrError
from nsutil.state import locked, prune, state_dir

from recipes import cgroup as cgroup_recipe
from recipes.container import rootfs as rootfs_recipe
from recipes.container import rootless as rootless_recipe
from recipes.common import upperfs
from recipes.container.run import SETUP_FAILED, start, wait  # noqa: F401 (public API)
from recipes.container import ids
from recipes.container.spec import (PATH, CommandNotExecutable, CommandNotFound,  # noqa: F401
                            ContainerOOM, ContainerTimeout, Spec, find_command, make_spec, settle)
from recipes.container.state import (Container, leftovers, record_exit,  # noqa: F401
                                     recorded_cgroups)
from recipes.cow import remove_tree

SECTION = "the whole container (namespaces + cgroups + copy-on-write)"


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
                raise ids.name_in_use(spec.name) from None

    def mkdir_shell(argv: list[str]) -> None:
        if os.path.lexists(cdir):   # mkdir would say only "File exists"
            raise ids.name_in_use(spec.name)
        nshell.run(argv)

    def held(make: Callable[[], object]) -> None:
        with locked(shared=True):    # a concurrent prune() cannot remove the state dir now
            make()

    run.run(Step(f"make the container directory {cdir}" + ("" if on_tmpfs else
                 " (overlay upper, work, merged)"), argv=["mkdir"] + first,
                 native=lambda: held(lambda: mkdirs(first)),
                 shell=lambda argv: held(lambda: mkdir_shell(argv)),
                 undo=(_rmtree_step(cdir) if spec.ids is None else
                       rootless_recipe.remove_step(cdir, spec.ids)) if spec.rm else None))
    if on_tmpfs:
        upperfs.mount_upper_tmpfs(run, cdir, fs, undo=spec.rm, mode="0700")
        run.run(Step("make the overlay's upper, work and merged in it", argv=["mkdir"] + subdirs,
                     native=lambda: mkdirs(subdirs)))
    return cdir


def cgroup_controllers(spec: Spec) -> tuple[str, ...]:
    """The controllers of the container's cgroup: those of the limits asked for, and on v1
    pids always (a v1 cgroup exists only in a controller's hierarchy; a bare v2 cgroup groups
    and kills its processes by itself, so v2 needs no controller delegated for that)."""
    if spec.ids is not None:   # without root: only what the limits need (delegated v2)
        return rootless_recipe.controllers(spec)
    v1 = cgroupfs.host_layout().mode != "unified"
    return tuple(c for c, on in (("memory", spec.limits.memory is not None),
                                 ("pids", v1 or spec.limits.pids is not None),
                                 ("cpu", spec.limits.cpus is not None)) if on)


def make_cgroup(run: Runner, spec: Spec) -> Cgroup | None:
    """Steps: the container's cgroup (:func:`cgroup_controllers`) and its limits; undo: kill
    what is left, remove it. None without root where no cgroup is delegated to the user."""
    if spec.ids is not None and not rootless_recipe.wants_cgroup(spec):
        return None
    cg = cgroup_recipe.create_cgroup(run, spec.name, cgroup_controllers(spec))
    cgroup_recipe.set_limits(run, cg, spec.limits)
    return cg


def _check_host(run: Runner, spec: Spec) -> upperfs.Fs:
    """What the host must offer, checked before anything is made: an upper for the overlay,
    a lower the rootfs can be, the cgroup controllers, mount_setattr for ``:ro`` volumes."""
    fs = upperfs.plan_upper(state_dir(create=False))
    upperfs.check_lower(spec.rootfs or rootfs_recipe.cache_dir(), "the rootfs")
    if run.rootless:
        rootless_recipe.check(spec, fs)
    else:
        cgroupfs.require(cgroup_controllers(spec))
    if not run.explain and any(v.readonly for v in spec.volumes):
        mountattr.require("--volume ...:ro")
    return fs


def _settle_default_rootfs(run: Runner, spec: Spec) -> None:
    """Without ``--rootfs``: the cached busybox rootfs, built first if need be."""
    default = rootfs_recipe.default_path()
    if os.path.isfile(os.path.join(default, "bin", "busybox")):
        settle(spec, default)
        return
    if run.explain:
        run.heading("build the busybox root filesystem (once; it is cached)")
    path = rootfs_recipe.ensure_default(run)
    if run.explain:
        spec.rootfs = path
    else:
        settle(spec, path)


def prepare(run: Runner, argv: Sequence[str], rootfs: str | None = None,
            **options: Any) -> tuple[Spec, upperfs.Fs]:
    """Check everything before anything is made: the options (:func:`make_spec`), what the
    host must offer, the rootfs (the cached busybox one is built first if need be) and the
    name (one in use is refused naming its container; a dead one's leftovers are removed,
    so a name outlives a SIGKILLed run). Returns the spec and the upper's filesystem."""
    img = None
    if options.get("image") is not None:
        from recipes.container import fromimage
        img, argv, options = fromimage.open_image(options.pop("image"), rootfs, argv, options,
                                                 backend=str(run.backend))
    options.pop("image", None)
    spec = make_spec(argv, rootfs, **options)
    if img is not None:
        fromimage.settle_image(spec, img)
    fs = _check_host(run, spec)
    if spec.rootfs is None:
        _settle_default_rootfs(run, spec)
    if not run.explain:
        ids.claim_name(spec.name)
    return spec, fs


def launch(run: Runner, spec: Spec, fs: upperfs.Fs, fds: tuple[int | None, int | None,
           int | None] = (None, None, None), extra: dict | None = None,
           log_name: str | None = None) -> Container:
    """Steps: the container's directory, its cgroup, its processes (:func:`start`); the
    record gets a new id and ``extra``; with ``log_name`` the command's stdout and stderr
    go to that file in the container's directory (``extra["log"]``). The Runner's undo
    takes them all down."""
    if spec.image_id is not None:
        _use_image(run, spec.image_id, spec.name)
    cdir = make_dirs(run, spec, fs)
    log_fd = -1
    if log_name and not run.explain:
        extra = dict(extra or {}, log=os.path.join(cdir, log_name))
        log_fd = os.open(extra["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC,
                         0o640)
        fds = (fds[0], log_fd, log_fd)
    try:
        return _launch_in(run, spec, cdir, fds, extra)
    finally:
        if log_fd >= 0:
            os.close(log_fd)


def _launch_in(run: Runner, spec: Spec, cdir: str, fds: tuple[int | None, int | None,
               int | None], extra: dict | None) -> Container:
    cg = make_cgroup(run, spec)
    ct = Container(spec.name, cdir, cg, spec.rootfs, id=ids.new_id(),
                   extra={"env": spec.environ(), "workdir": spec.workdir or "/",
                          "user": [spec.user.uid, spec.user.gid] if spec.user else None,
                          "net": spec.net, "image": spec.image_name, **(extra or {})})
    return start(run, spec, ct, fds)


def _use_image(run: Runner, image_id: str, name: str) -> None:
    """Step: record in the image store that the container runs from the image (image-rm
    refuses meanwhile); undo: drop the record."""
    from recipes import images
    paths: list[str] = []
    run.run(Step(f"record in the image store that {name} uses image {images.short(image_id)}",
                 display=f"echo '{{...}}' > {images.store_dir()}/uses/{name}.json",
                 native=lambda: paths.append(images.use(image_id, name)),
                 undo=Step("drop the image-use record", display=f"rm {name}.json",
                           native=lambda: [images.drop(p) for p in paths])))


def oom_line(ct: Container, spec: Spec, code: int) -> str | None:
    """Why a container that ended with 137 was killed, when it was the kernel's OOM killer
    (v2 ``memory.events``, v1 ``memory.oom_control``: ``oom_kill N``), else None."""
    if code != 128 + 9 or spec.limits.memory is None:
        return None
    try:
        kills = ct.cgroup.oom_kills()
    except NsrError:
        return None
    if not kills:
        return None
    limit = spec.limits.memory
    shown = f"{limit >> 20}M" if limit % (1 << 20) == 0 else f"{limit} bytes"
    return (f"container {ct.name} was killed by the kernel's OOM killer (oom_kill {kills} in "
            f"its cgroup): it needed more than --memory {shown}")


def run_container(run: Runner, argv: Sequence[str], rootfs: str | None = None,
                  stdin: int | None = None, stdout: int | None = None,
                  stderr: int | None = None, **options: Any) -> int:
    """``container-run``: run ``argv`` in a new container and return its exit status.

    ``options`` are those of :func:`recipes.container.spec.make_spec` (``memory``, ``pids``,
    ``cpus``, ``hostname``, ``domainname``, ``net``, ``rm``, ``name``, ``timeout``,
    ``volumes``, ``tmpfs``, ``read_only``, ``env``, ``workdir``, ``user``).
    ``stdin``/``stdout``/``stderr`` are file descriptors for the command (default: ours).
    ``image``: run on an image's layers with its config (:mod:`recipes.container.fromimage`).
    Bad input raises before anything is made; with ``rm`` nothing is left afterwards.
    Killed by the OOM killer, it raises :class:`ContainerOOM` (exit status 137).
    """
    timeline.mark("run_container")
    spec, fs = prepare(run, argv, rootfs, **options)
    timeline.mark("prepared")
    if run.explain:  # the command's own output is all a real run prints
        run.heading(f"{SECTION}: {' '.join(spec.argv)}")
    ct = None
    try:
        ct = launch(run, spec, fs, (stdin, stdout, stderr))
        code = wait(run, ct, spec.timeout)
        why = None if run.explain else oom_line(ct, spec, code)
        if why:
            raise ContainerOOM(why, hint="give it more with --memory, e.g. "
                               f"--memory {2 * (spec.limits.memory or 0) >> 20}M")
    except BaseException as exc:
        run.undo()
        if isinstance(exc, NsrError) and exc.exit_code in (126, 127, 137):
            _keep_exit(run, spec, ct, exc.exit_code, str(exc))
        raise
    timeline.mark("undo")
    errors = run.undo()
    timeline.mark("undone")
    _keep_exit(run, spec, ct, code, None)
    if errors:
        raise errors[0]
    return code


def _keep_exit(run: Runner, spec: Spec, ct: Container | None, code: int,
               why: str | None) -> None:
    """With ``--no-rm``: the container's exit code in its record, once it ended (and its
    cgroup is gone), so ``container-ls --all`` shows it exited and ``cleanup`` keeps it
    until ``container-rm``. A run killed before this point leaves a dead container."""
    if spec.rm or ct is None or run.explain:
        return
    record_exit(os.path.join(ct.dir, "state.json"), code, why)
