"""Container tasks: container-run and rootfs-busybox."""
from __future__ import annotations

from invoke import Exit

from cli.common import command_argv, make_runner, nsr_task


@nsr_task(help={"rootfs": "root filesystem directory (default: a cached busybox rootfs, "
                          "built on first use)",
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
                      "(default; --no-rm keeps the directory with what it wrote)",
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
                        "else the uid); no supplementary groups; without root, an id other "
                        "than 0 needs an /etc/subuid and /etc/subgid range and newuidmap/"
                        "newgidmap (package uidmap)"},
          iterable=["volume", "tmpfs", "env"])
def container_run(c, rootfs=None, memory=None, pids=None, cpus=None, hostname=None, net=False,
                  rm=True, name=None, timeout=None, volume=None, tmpfs=None, read_only=False,
                  domainname=None, env=None, workdir=None, user=None, backend=None,
                  explain=False):
    """Run a command in a container: invoke container-run [OPTIONS] -- CMD ARGS...

    New mount, UTS, IPC, PID and cgroup namespaces (and network with --net), a cgroup with
    the limits, an overlay over the rootfs, pivot_root with the old root detached, /proc and
    a minimal /dev. PID 1 reaps zombies and forwards signals; the exit status is the
    command's (128+N for signal N; 127 if it is not in the rootfs; 137 past --timeout).
    On cgroup v2 without systemd, the controller of a limit that the root of the cgroup
    namespace does not enable for its children is enabled there, as runc does (one line on
    stderr; it stays enabled: other cgroups may rely on it).

    Without root, as podman and bubblewrap: a user namespace first (you are root inside;
    uids 0-65535 with an /etc/subuid range and newuidmap), overlayfs with userxattr (Linux
    5.11+), /dev by bind mounts, and --memory/--pids/--cpus only in a cgroup delegated to you
    (systemd-run --user --scope -p Delegate=yes invoke container-run ...). --net is isolated:
    outside connectivity (pasta, slirp4netns) is out of scope.
    """
    from recipes import container
    from nsutil.rootless import require_namespaces
    argv = command_argv("container-run", "[OPTIONS]")
    if not explain:
        require_namespaces("container-run")
    with make_runner(backend, explain) as run:
        code = container.run_container(
            run, argv, rootfs=rootfs, memory=memory, pids=pids, cpus=cpus, hostname=hostname,
            net=net, rm=rm, name=name, timeout=timeout, volumes=volume or (), tmpfs=tmpfs or (),
            read_only=read_only, domainname=domainname, env=env or (), workdir=workdir,
            user=user)
    if code:
        raise Exit(code=code)


@nsr_task(help={"directory": "where to build it (a new or empty directory)"})
def rootfs_busybox(c, directory, backend=None, explain=False):
    """Build a busybox root filesystem in DIRECTORY (static busybox + applet links + /etc)."""
    from recipes.container import rootfs
    from nsutil.errors import require_root
    if not explain:
        require_root("rootfs-busybox")
    with make_runner(backend, explain, keep=True) as run:
        path = rootfs.build(run, directory)
        run.say(f"built {path}: try `invoke container-run --rootfs {path} -- sh`")

