"""Container tasks: container-run, -ls, -exec, -logs, -stop, -kill, -rm and rootfs-busybox."""
from __future__ import annotations

import sys

from invoke import Exit

from cli.common import command_argv, make_runner, nsr_task

#: container-run's exit status when nsrecipes could not start the container (Docker, podman)
START_FAILED = 125


@nsr_task(help={"rootfs": "root filesystem directory (default: a cached busybox rootfs, "
                          "built on first use)",
                "image": "NAME[:TAG] of an imported image: its layers are the overlay's "
                         "lowers, its config applies (Entrypoint+Cmd, Env, WorkingDir, User); "
                         "a command after -- replaces Cmd",
                "memory": "memory limit, e.g. 64M (no limit by default)",
                "pids": "most processes the container may have, PID 1 and the command "
                        "included, e.g. 64 (at least 2; max: no limit)",
                "cpus": "CPU quota in CPUs, e.g. 0.5",
                "hostname": "hostname inside (default: the container's name)",
                "domainname": "NIS domain name inside (its own UTS namespace)",
                "net": "give the container its own network namespace (only lo, up): "
                       "isolated; without root, reaching outside needs pasta or slirp4netns, "
                       "which nsrecipes does not set up",
                "rm": "remove the container's directory and cgroup when it exits "
                      "(default in the foreground; --no-rm keeps it, exited, with what it "
                      "wrote, until container-rm); with --detach, only if --rm is given (as "
                      "docker run -d --rm)",
                "detach": "run it in the background: print its id and return; a supervisor "
                          "process keeps it, its exit code and its log (container-ls, "
                          "container-logs, container-stop, container-rm)",
                "name": "container name, nsr-c-... (default: random)",
                "timeout": "kill the container after SECONDS (e.g. 10 or 0.5); exit status 137",
                "volume": "SRC:DST[:ro] bind the host's SRC, with its submounts, on DST; ro: "
                          "all of it read-only (Linux 5.12+); repeatable",
                "tmpfs": "DST[:size=64m,mode=1777,ro] an empty tmpfs on DST; repeatable",
                "read_only": "mount the rootfs read-only (writes fail with EROFS; volumes, "
                             "tmpfs, /dev keep their own)",
                "env": "KEY=VALUE in the command's environment; repeatable",
                "workdir": "the command's working directory (made if missing)",
                "user": "UID[:GID] the command runs as (gid: from the rootfs's /etc/passwd, "
                        "else the uid); no supplementary groups; with --image also "
                        "NAME[:GROUP] from the image's /etc/passwd and /etc/group; without "
                        "root, an id other than 0 needs an /etc/subuid and /etc/subgid range "
                        "and newuidmap/newgidmap (package uidmap)"},
          iterable=["volume", "tmpfs", "env"])
def container_run(c, rootfs=None, memory=None, pids=None, cpus=None, hostname=None, net=False,
                  rm=True, name=None, timeout=None, volume=None, tmpfs=None, read_only=False,
                  domainname=None, env=None, workdir=None, user=None, detach=False,
                  image=None, backend=None, explain=False):
    """Run a command in a container: invoke container-run [OPTIONS] -- CMD ARGS...

    New mount, UTS, IPC, PID and cgroup namespaces (and network with --net), a cgroup with
    the limits, an overlay over the rootfs, pivot_root with the old root detached, /proc and
    a minimal /dev. PID 1 reaps zombies and forwards signals; the exit status is the
    command's (128+N for signal N; 126 not executable; 127 not in the rootfs; 137 past
    --timeout or killed by the OOM killer, with one line saying which; 125 when nsrecipes
    could not start it; 2 for a bad option). --detach prints the container's id and returns.
    On cgroup v2 without systemd, the controller of a limit that the root of the cgroup
    namespace does not enable for its children is enabled there, as runc does (one line on
    stderr; it stays enabled: other cgroups may rely on it).

    Without root, as podman and bubblewrap: a user namespace first (you are root inside;
    uids 0-65535 with an /etc/subuid range and newuidmap), overlayfs with userxattr (Linux
    5.11+), /dev by bind mounts, and --memory/--pids/--cpus only in a cgroup delegated to you
    (systemd-run --user --scope -p Delegate=yes invoke container-run ...). --net is isolated:
    outside connectivity (pasta, slirp4netns) is out of scope.
    """
    from nsutil.errors import NsrError
    from nsutil.rootless import require_namespaces
    argv = command_argv("container-run", "[OPTIONS]", required=image is None)
    if not explain:
        require_namespaces("container-run")
    options = dict(memory=memory, pids=pids, cpus=cpus, hostname=hostname, net=net, name=name,
                   timeout=timeout, volumes=volume or (), tmpfs=tmpfs or (), read_only=read_only,
                   domainname=domainname, env=env or (), workdir=workdir, user=user,
                   image=image)
    try:
        if detach and not explain:
            from recipes.container import supervisor
            print(supervisor.spawn(argv, rootfs, backend, _rm_given(), options))
            return
        from recipes import container
        with make_runner(backend, explain, announce_owner=explain) as run:
            code = container.run_container(run, argv, rootfs=rootfs, rm=rm, **options)
    except NsrError as exc:
        if exc.exit_code == 1:    # not a bad option (2), nor the command's own (126, 127, 137)
            exc.exit_code = START_FAILED
        raise
    if code:
        raise Exit(code=code)


def _rm_given() -> bool:
    """--rm written on the command line (with --detach the default is to keep it)."""
    words = sys.argv[:sys.argv.index("--")] if "--" in sys.argv else sys.argv
    return "--rm" in words


_NAME = "the container: its name or id, or a prefix of either that only it has"


@nsr_task(help={"all": "also the exited and dead ones (default: running only)",
                "json": "one JSON list with every field (id in full, created as a Unix time)"})
def container_ls(c, all=False, json=False):
    """List containers: id, name, image (rootfs), command, state, pid, created, exit code.

    States: running; exited (kept until container-rm); dead (its tool or supervisor was
    killed: cleanup removes it, and its name can be used again).
    """
    from recipes.container import lifecycle
    items = lifecycle.rows(all=all)
    if json:
        import json as j
        print(j.dumps(items, indent=1))
    else:
        print(lifecycle.table(items))


@nsr_task(help={"name": _NAME,
                "user": "UID[:GID] to run as (default: the container's --user, else root)",
                "env": "KEY=VALUE added to the container's environment; repeatable",
                "workdir": "working directory in the container (default: the container's)",
                "tty": "a new pseudo-terminal for an interactive shell (docker exec -it)"},
          iterable=["env"])
def container_exec(c, name, user=None, env=None, workdir=None, tty=False, backend=None):
    """Run a command in a running container: invoke container-exec NAME -- CMD ARGS...

    Joins its cgroup and all its namespaces, with its environment (shell form: nsenter).
    The exit status is the command's (126 not executable, 127 not found).
    """
    from recipes.container import ids
    from recipes.container.execin import exec_in
    argv = command_argv("container-exec", "NAME [OPTIONS]")
    with make_runner(backend, False, keep=True, announce_owner=False) as run:
        code = exec_in(run, ids.resolve(name), argv, user=user, env=env or (),
                       workdir=workdir, tty=tty)
    if code:
        raise Exit(code=code)


@nsr_task(help={"name": _NAME,
                "follow": "go on printing what it writes until it exits (tail -f)"})
def container_logs(c, name, follow=False, backend=None):
    """Print what a detached container wrote (stdout and stderr), from its start."""
    from recipes.container import ids, lifecycle
    with make_runner(backend, False, keep=True, announce_owner=False) as run:
        lifecycle.logs(run, ids.resolve(name), follow=follow)


@nsr_task(help={"name": _NAME,
                "time": "seconds to wait after SIGTERM before SIGKILL (default 10)"})
def container_stop(c, name, time=10.0, backend=None):
    """Stop a running container: SIGTERM to its PID 1, SIGKILL after --time seconds."""
    from recipes.container import ids, lifecycle
    rec = ids.resolve(name)
    with make_runner(backend, False, keep=True, announce_owner=False) as run:
        lifecycle.stop(run, rec, float(time))
    print(rec.get("name"))


@nsr_task(help={"name": _NAME,
                "signal": "the signal: KILL (default), TERM, HUP, USR1, ... or a number"})
def container_kill(c, name, signal="KILL", backend=None):
    """Send a signal to a running container's PID 1 (which passes it on to the command)."""
    from recipes.container import ids, lifecycle
    rec = ids.resolve(name)
    with make_runner(backend, False, keep=True, announce_owner=False) as run:
        lifecycle.kill(run, rec, signal)
    print(rec.get("name"))


@nsr_task(help={"name": _NAME,
                "force": "kill it first if it runs (else a running one is refused)"})
def container_rm(c, name, force=False, backend=None):
    """Remove a container: its processes, cgroup, directory (what it wrote) and log."""
    from recipes.container import ids, lifecycle
    rec = ids.resolve(name)
    with make_runner(backend, False, keep=True, announce_owner=False) as run:
        lifecycle.remove(run, rec, force=force)
    print(rec.get("name"))


@nsr_task(help={"directory": "where to build it (a new or empty directory)"})
def rootfs_busybox(c, directory, backend=None, explain=False):
    """Build a busybox root filesystem in DIRECTORY (static busybox + applet links + /etc)."""
    from recipes.container import rootfs
    from nsutil.rootless import require_namespaces
    if not explain:     # without root: busybox's links are made by root in a user namespace
        require_namespaces("rootfs-busybox")
    with make_runner(backend, explain, keep=True) as run:
        path = rootfs.build(run, directory)
        run.say(f"built {path}: try `invoke container-run --rootfs {path} -- sh`")

