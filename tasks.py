"""nsrecipes command line: `invoke --list` shows every task, `invoke TASK --help` its options.

This file is thin on purpose: it parses options, calls a recipe and prints. Every error
nsrecipes raises becomes one line on stderr with a hint and a non-zero exit status
(cli.common.nsr_task). The document's sections are here; the network labs and the
environments are in cli/labs.py and cli/envs.py.
"""
from __future__ import annotations

import os
import sys
from invoke import Exit, Task

from cli.common import current_lesson, make_runner, nsr_task, root_demo
from cli.envs import (env_create, env_exec, env_hostname, env_idmap, env_ls,  # noqa: F401
                      env_mount, env_mq, env_rm, env_veth)
from cli.labs import net_exec, net_link, net_topo  # noqa: F401
from cli.machines import machines_install  # noqa: F401


# ==== core demos (issue 2) ==================================================================

@nsr_task(help={"draw": "also draw the tree of PID namespaces the demo made into FILE.svg: "
                        "each process with its PID as every level sees it (NSpid); the "
                        "folder must exist; --explain draws nothing"}, lesson="shell")
def pid_demo(c, draw=None, backend=None, explain=False):
    """PID namespace: the child is PID 1 and sees only its own processes; namespaces nest.

    With /proc mounted in a new mount namespace, `echo $$` prints 1 and `ps` lists only the
    child's processes, while the host sees its real PID; a nested PID namespace shows the
    tree: the parent sees the grandchild's processes, the grandchild none of its parent's.
    """
    from recipes import pid
    with make_runner(backend, explain) as run:
        pid.demo(run, draw=draw)


@nsr_task(help={"draw": "also draw the mounts the demo made into FILE.svg: their peer "
                        "groups read from mountinfo (shared:N, master:N) and the arrows a "
                        "mount event propagates along; the folder must exist; --explain "
                        "draws nothing"}, lesson="shell")
def mount_demo(c, draw=None, backend=None, explain=False):
    """mount namespace: the five propagation states, and make-rprivate keeping mounts inside.

    Shared, slave, shared-and-slave, private and unbindable mounts in a scratch tree
    (/tmp/nsr-mount-*) and where mount events propagate; after `mount --make-rprivate /`
    inside, a mount made inside no longer reaches the host. Everything is undone.
    """
    from recipes import mount
    with make_runner(backend, explain) as run:
        mount.demo(run, draw=draw)


@nsr_task(help={"hostname": "hostname set in the namespace that is joined and kept alive "
                            "(default NewNamespace)"}, lesson="step")
def api_demo(c, hostname="NewNamespace", backend=None, explain=False):
    """The four ways to use the namespace API: clone, /proc/PID/ns, setns, unshare.

    clone() a child into new namespaces; compare /proc/PID/ns links (same inode = same
    namespace) and keep a namespace alive with a bind mount after its last process exits;
    setns() into it by pid and by file; unshare() the calling process (a forked child).
    """
    from recipes import api
    with make_runner(backend, explain) as run:
        api.demo(run, hostname=hostname)


@nsr_task(help={"hostname": "the hostname to set inside the new UTS namespace (default NewNamespace)",
                "command": "command to run inside, as one string split on spaces (default: hostname)"},
          lesson="shell")
def uts_demo(c, hostname="NewNamespace", command="hostname", backend=None, explain=False):
    """UTS namespace: a child in a new UTS namespace sets its hostname; the host's is unchanged."""
    root_demo("uts-demo", "uts", backend, explain, hostname=hostname, command=command.split())


@nsr_task(lesson="shell")
def ipc_demo(c, backend=None, explain=False):
    """IPC namespace: a host message queue (ipcmk -Q) is invisible in a new IPC namespace."""
    root_demo("ipc-demo", "ipc", backend, explain)


@nsr_task(help={"uid": "outside uid that uid 0 inside maps to (default 1000 as root, "
                       "your own uid otherwise)",
                "gid": "outside gid that gid 0 inside maps to (default: same as the uid)"},
          lesson="shell")
def user_demo(c, uid=None, gid=None, backend=None, explain=False):
    """User namespace: uid 0 inside maps to an outside uid; root inside, powerless outside.

    Works as root and as an unprivileged user.
    """
    from recipes import user
    with make_runner(backend, explain) as run:
        user.demo(run, uid=uid, gid=gid)


# ==== the two namespaces the document predates (issue 11) ===================================

@nsr_task(lesson="shell")
def cgroupns_demo(c, backend=None, explain=False):
    """cgroup namespace (beyond the document, Linux 4.6+): inside, /proc/self/cgroup shows /.

    A holder moves into a scratch cgroup nsr-cgns-* on the v2 hierarchy, then unshares its
    cgroup namespace: the host reads 0::/nsrecipes/nsr-cgns-*, a process that joins cgroup
    and namespace 0::/, one that only joins the namespace (nsenter --cgroup) a path with
    ../ -- relative to the namespace's root. The cgroup is removed at the end.
    """
    root_demo("cgroupns-demo", "cgroupns", backend, explain)


@nsr_task(help={"boottime": "CLOCK_BOOTTIME offset in whole SECONDS, 0 to 315360000 (ten "
                            "years): what uptime and /proc/uptime show inside (default 86400, "
                            "one day)",
                "monotonic": "CLOCK_MONOTONIC offset in whole SECONDS, 0 to 315360000 "
                             "(default 3600)"},
          lesson="shell")
def time_demo(c, boottime="86400", monotonic="3600", backend=None, explain=False):
    """time namespace (beyond the document, Linux 5.6+): uptime inside runs ahead.

    unshare --time --monotonic N --boottime N: /proc/PID/timens_offsets shows the offsets,
    /proc/uptime and uptime inside are --boottime seconds ahead of the host's, CLOCK_MONOTONIC
    --monotonic seconds, CLOCK_REALTIME (the wall clock) the same. Refused on older kernels.
    """
    from recipes import timens
    root_demo("time-demo", "timens", backend, explain,
               boottime=timens.check_offset(boottime, "--boottime"),
               monotonic=timens.check_offset(monotonic, "--monotonic"))


# ==== network (issue 3) =====================================================================

@nsr_task(lesson="shell")
def net_demo(c, backend=None, explain=False):
    """Network namespace: a new network namespace has only lo; shown down, then up."""
    root_demo("net-demo", "net", backend, explain)


@nsr_task(help={"name": "name of the first namespace and of its veth end (default nsr-a; "
                        "at most 15 bytes)",
                "peer": "name of the second namespace and of its veth end (default nsr-b)",
                "addr": "address of the first end, with prefix (default 10.200.0.1/24)",
                "peer_addr": "address of the second end, with prefix (default 10.200.0.2/24)",
                "delete": "remove the two namespaces (and the pair) made by an earlier run",
                "draw": "also draw the two namespaces and the veth pair joining them (names, "
                        "addresses, namespace inodes, as the kernel reports them) into "
                        "FILE.svg; the folder must exist; --explain draws nothing"},
          lesson="shell")
def net_veth(c, name="nsr-a", peer="nsr-b", addr="10.200.0.1/24", peer_addr="10.200.0.2/24",
             delete=False, draw=None, backend=None, explain=False):
    """Two network namespaces joined by a veth pair with addresses, proven by real packets.

    They stay (ip netns list shows them) until --delete. Idempotent: the same run again
    changes nothing; a name that exists otherwise fails with one line and touches nothing.
    """
    from recipes import draw as pictures, veth
    from nsutil.errors import InvalidInput, require_root
    if draw:
        if delete:
            raise InvalidInput("--draw with --delete: there is nothing left to draw",
                               hint="draw when making the pair: net-veth --draw FILE.svg")
        pictures.check_path(draw)
    if not explain:
        require_root("net-veth")
    with make_runner(backend, explain, keep=True) as run:
        if delete:
            veth.veth_delete(run, name, peer)
        else:
            made = veth.veth_create(run, name, peer, addr, peer_addr)
            if draw and explain:
                print(f"(--explain: nothing is drawn; a real run draws {draw})")
            elif draw:
                seen = veth.veth_observed(run, name, peer, made["reachable"])
                run.say(f"drew the pair into {pictures.veth(seen, draw)}")


# ==== cgroups, copy-on-write, container (issue 5) ===========================================

@nsr_task(help={"memory": "memory limit for the OOM part (default 32M)",
                "pids": "pids limit the fork bomb runs into (default 32)",
                "cpus": "CPU quota for the busy loop, in CPUs (default 0.5)",
                "seconds": "how long the busy loop spins (default 1.0)"}, lesson="step")
def cgroup_demo(c, memory="32M", pids="32", cpus="0.5", seconds="1.0", backend=None,
                explain=False):
    """cgroups limit resources: an OOM kill, a fork bomb stopped, a CPU quota measured.

    Three cgroups named nsr-cg-*: a child allocating past the memory limit is killed by the
    OOM killer (memory.oom_control / memory.events count it); a bounded fork bomb stops at
    pids.max; a busy loop gets about quota/period of a CPU. v1, v2 and hybrid hosts. On v2
    without systemd, a controller the cgroup namespace's root does not enable for its
    children is enabled there, as runc does (said on stderr; it stays enabled).
    """
    from nsutil.limits import parse_number
    seconds = parse_number(seconds, "--seconds", kind=float, minimum=0.1, maximum=60,
                           example="1.0")
    root_demo("cgroup-demo", "cgroup", backend, explain,
               memory=memory, pids=pids, cpus=cpus, seconds=seconds)


@nsr_task(help={"size_mb": "size of the big file in the base layer, MiB (default 8)"},
          lesson="step")
def cow_demo(c, size_mb="8", backend=None, explain=False):
    """Copy-on-write with overlayfs: copy-up, whiteouts, and the disk two containers share.

    Two lower layers under /tmp/nsr-cow-*, two overlay mounts over them: a write lands in
    upper and the lower is unchanged, a delete leaves a whiteout (char device 0/0), and the
    disk used by two containers sharing the layers is compared with two full copies.
    """
    from nsutil.limits import parse_number
    root_demo("cow-demo", "cow", backend, explain,
               size_mb=parse_number(size_mb, "--size-mb", minimum=1, maximum=1024, example="8"))


@nsr_task(help={"rootfs": "root filesystem directory (default: a cached busybox rootfs, "
                          "built on first use)",
                "memory": "memory limit, e.g. 64M (no limit by default)",
                "pids": "most processes the container may have, PID 1 and the command "
                        "included, e.g. 64 (at least 2; max: no limit)",
                "cpus": "CPU quota in CPUs, e.g. 0.5",
                "hostname": "hostname inside (default: the container's name)",
                "domainname": "NIS domain name inside (its own UTS namespace)",
                "net": "give the container its own network namespace (only lo, up)",
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
                        "else the uid); no supplementary groups"},
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
    """
    import shlex
    from recipes import container
    from nsutil.errors import require_root
    argv = sys.argv[sys.argv.index("--") + 1:] if "--" in sys.argv else shlex.split(c.remainder)
    if not explain:
        require_root("container-run")
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
    from recipes import rootfs
    from nsutil.errors import require_root
    if not explain:
        require_root("rootfs-busybox")
    with make_runner(backend, explain, keep=True) as run:
        path = rootfs.build(run, directory)
        run.say(f"built {path}: try `invoke container-run --rootfs {path} -- sh`")

# ==== tour, doctor, cleanup ================================================================

@nsr_task(lesson="step")
def tour(c, backend=None, explain=False):
    """All demos in the document's order, with headings: the main job. Needs root."""
    from recipes import tour as t
    from nsutil.errors import require_root
    if not explain:
        require_root("tour")
    t.tour(backend=backend, explain=explain, lesson=current_lesson())


@nsr_task(help={"dry_run": "only list what would be removed and what is kept (and why); "
                           "remove nothing",
                "all": "remove everything nsrecipes made, in use or not: live environments, "
                       "net-veth pairs, topologies, running containers too (listed first)"})
def cleanup(c, dry_run=False, all_=False):
    """Remove what nsrecipes left broken or orphaned; keep what is in use (--all: everything).

    Removed: environments whose holder died or whose creator died half-way, half-built
    net-veth pairs and topologies, containers whose tool is gone, nsr cgroups with no process,
    nsr-cow-*/nsr-user-* scratch directories. Kept: live environments, complete pairs and
    topologies, running containers. A network namespace no nsrecipes record names is never
    touched, whatever its name.
    """
    from recipes import cleanup as cl
    from nsutil.errors import require_root
    require_root("cleanup")
    plan = cl.sweep(everything=all_)
    for line in cl.plan_lines(plan, dry_run):
        print(line, flush=True)
    removed, failed = cl.remove_all(dry_run=dry_run, items=plan.remove)
    for item, exc in failed:
        print(f"FAILED {item.kind} {item.name}: {exc}")
    print(cl.summary(removed, failed, plan.kept, dry_run))
    if failed:
        raise Exit(f"nsrecipes: cleanup: {len(failed)} could not be removed (hint: see above)",
                   code=1)

@nsr_task()
def doctor(c):
    """Check the kernel and host: namespaces, user-ns limits, cgroups, overlayfs, tools, root.

    Prints an ok/missing table with hints; exits non-zero if something the demos need is missing.
    """
    from recipes import doctor as doc
    checks = doc.run_checks()
    print(doc.format_table(checks))
    missing = [ch.name for ch in checks if ch.required and not ch.ok]
    if missing:
        raise Exit(f"nsrecipes: doctor: missing {', '.join(missing)} (hint: see the table above)",
                   code=1)


def _route_task_help(argv: list[str]) -> None:
    """``invoke TASK ARG --help`` -> ``invoke --help TASK``.

    Invoke would take ``--help`` as the value of a task's positional argument (``env-rm
    --help`` would try to remove an environment called "--help"); route it to the help.
    """
    if not argv or not os.path.basename(argv[0]).startswith("inv"):
        return
    args = argv[1:argv.index("--")] if "--" in argv else argv[1:]
    names = {t.name.replace("_", "-") for t in globals().values() if isinstance(t, Task)}
    given = [i for i, a in enumerate(args) if a.replace("_", "-") in names]
    if given and any(a in ("--help", "-h") for a in args[given[0] + 1:]):
        os.execv(argv[0], [argv[0], *args[:given[0]], "--help", args[given[0]]])


_route_task_help(sys.argv)
