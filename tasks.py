"""nsrecipes command line: `invoke --list` shows every task, `invoke TASK --help` its options.

This file is thin on purpose: it parses options, calls a recipe and prints. Every error
nsrecipes raises becomes one line on stderr with a hint and a non-zero exit status.
"""
from __future__ import annotations

import functools
import inspect
import os
import signal
import sys
from typing import Any, Callable

from invoke import Exit, Task, task

from nsutil.errors import NsrError

COMMON_HELP = {
    "backend": "auto | shell | native: run steps with util-linux/iproute2 commands or with "
               "syscalls/netlink (default: $NSR_BACKEND, else auto = shell where installed)",
    "explain": "print the steps with the document section and the equivalent shell "
               "commands, and change nothing",
}


INTERRUPTED = "nsrecipes: interrupted; what this run made has been undone"


def nsr_task(help: dict[str, str] | None = None, **kwargs: Any) -> Callable:
    """@task, plus: the common option help, and NsrError -> one line and a non-zero exit."""
    def decorate(fn: Callable) -> Any:
        params = inspect.signature(fn).parameters
        merged = {k: v for k, v in COMMON_HELP.items() if k in params}
        merged.update(help or {})

        @functools.wraps(fn)
        def body(c, *args: Any, **kw: Any) -> Any:
            interrupted: list[int] = []
            main_pid = os.getpid()

            def on_sigint(signum: int, frame: Any) -> None:
                if os.getpid() != main_pid:
                    # a fork that has not exec'd yet (sh's or ours): die, never unwind into
                    # the parent's code; the parent sees the signal itself
                    os._exit(128 + signum)
                interrupted.append(signum)
                raise KeyboardInterrupt

            signal.signal(signal.SIGINT, on_sigint)
            try:
                return fn(c, *args, **kw)
            except NsrError as exc:
                if interrupted:  # Ctrl-C also killed a child we were waiting for
                    raise Exit(INTERRUPTED, code=130) from None
                raise Exit(f"nsrecipes: {exc}", code=exc.exit_code) from None
            except BrokenPipeError:  # `invoke tour | head`: stop quietly, like coreutils
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
                raise Exit(code=141) from None
            except KeyboardInterrupt:
                raise Exit(INTERRUPTED, code=130) from None

        kwargs.setdefault("auto_shortflags", False)  # no -h clash with --help
        return task(body, help=merged, **kwargs)
    return decorate


def _runner(backend: str | None, explain: bool, keep: bool = False):
    from nsutil.backend import Runner
    return Runner(backend=backend, explain=explain, keep=keep)


def _root_demo(task_name: str, module: str, backend: str | None, explain: bool,
               **kwargs: Any) -> None:
    """Run ``recipes.MODULE.demo(run, **kwargs)`` for a demo that needs root (unless it only
    explains): import the recipe, check root (naming ``task_name``), run it in a Runner."""
    import importlib
    from nsutil.errors import require_root
    recipe = importlib.import_module(f"recipes.{module}")
    if not explain:
        require_root(task_name)
    with _runner(backend, explain) as run:
        recipe.demo(run, **kwargs)


# ==== core demos (issue 2) ==================================================================

@nsr_task()
def pid_demo(c, backend=None, explain=False):
    """PID namespace: the child is PID 1 and sees only its own processes; namespaces nest.

    With /proc mounted in a new mount namespace, `echo $$` prints 1 and `ps` lists only the
    child's processes, while the host sees its real PID; a nested PID namespace shows the
    tree: the parent sees the grandchild's processes, the grandchild none of its parent's.
    """
    from recipes import pid
    with _runner(backend, explain) as run:
        pid.demo(run)


@nsr_task()
def mount_demo(c, backend=None, explain=False):
    """mount namespace: the five propagation states, and make-rprivate keeping mounts inside.

    Shared, slave, shared-and-slave, private and unbindable mounts in a scratch tree
    (/tmp/nsr-mount-*) and where mount events propagate; after `mount --make-rprivate /`
    inside, a mount made inside no longer reaches the host. Everything is undone.
    """
    from recipes import mount
    with _runner(backend, explain) as run:
        mount.demo(run)


@nsr_task(help={"hostname": "hostname set in the namespace that is joined and kept alive "
                            "(default NewNamespace)"})
def api_demo(c, hostname="NewNamespace", backend=None, explain=False):
    """The four ways to use the namespace API: clone, /proc/PID/ns, setns, unshare.

    clone() a child into new namespaces; compare /proc/PID/ns links (same inode = same
    namespace) and keep a namespace alive with a bind mount after its last process exits;
    setns() into it by pid and by file; unshare() the calling process (a forked child).
    """
    from recipes import api
    with _runner(backend, explain) as run:
        api.demo(run, hostname=hostname)


@nsr_task(help={"hostname": "the hostname to set inside the new UTS namespace (default NewNamespace)",
                "command": "command to run inside, as one string split on spaces (default: hostname)"})
def uts_demo(c, hostname="NewNamespace", command="hostname", backend=None, explain=False):
    """UTS namespace: a child in a new UTS namespace sets its hostname; the host's is unchanged."""
    _root_demo("uts-demo", "uts", backend, explain, hostname=hostname, command=command.split())


@nsr_task()
def ipc_demo(c, backend=None, explain=False):
    """IPC namespace: a host message queue (ipcmk -Q) is invisible in a new IPC namespace."""
    _root_demo("ipc-demo", "ipc", backend, explain)


@nsr_task(help={"uid": "outside uid that uid 0 inside maps to (default 1000 as root, "
                       "your own uid otherwise)",
                "gid": "outside gid that gid 0 inside maps to (default: same as the uid)"})
def user_demo(c, uid=None, gid=None, backend=None, explain=False):
    """User namespace: uid 0 inside maps to an outside uid; root inside, powerless outside.

    Works as root and as an unprivileged user.
    """
    from recipes import user
    with _runner(backend, explain) as run:
        user.demo(run, uid=uid, gid=gid)


# ==== network (issue 3) =====================================================================

@nsr_task()
def net_demo(c, backend=None, explain=False):
    """Network namespace: a new network namespace has only lo; shown down, then up."""
    _root_demo("net-demo", "net", backend, explain)


@nsr_task(help={"name": "name of the first namespace and of its veth end (default nsr-a; "
                        "at most 15 bytes)",
                "peer": "name of the second namespace and of its veth end (default nsr-b)",
                "addr": "address of the first end, with prefix (default 10.200.0.1/24)",
                "peer_addr": "address of the second end, with prefix (default 10.200.0.2/24)",
                "delete": "remove the two namespaces (and the pair) made by an earlier run"})
def net_veth(c, name="nsr-a", peer="nsr-b", addr="10.200.0.1/24", peer_addr="10.200.0.2/24",
             delete=False, backend=None, explain=False):
    """Two network namespaces joined by a veth pair with addresses, proven by real packets.

    They stay (ip netns list shows them) until --delete. Idempotent: the same run again
    changes nothing; a name that exists otherwise fails with one line and touches nothing.
    """
    from recipes import net
    from nsutil.errors import require_root
    if not explain:
        require_root("net-veth")
    with _runner(backend, explain, keep=True) as run:
        if delete:
            net.veth_delete(run, name, peer)
        else:
            net.veth_create(run, name, peer, addr, peer_addr)


@nsr_task(help={"shape": "star (hosts on a bridge in a hub namespace), line or ring",
                "hosts": "number of hosts (1 to 4000; default 3)",
                "file": "build the hosts, links and addresses listed in a TOML file instead",
                "check": "prove connectivity with real packets between the pairs that should "
                         "reach each other (all up to a size, a sample beyond)",
                "down": "tear down the topology of --scope (every recorded one without --scope)",
                "scope": "1-4 letters/digits put in every name (default: random per run)",
                "status": "list the topologies that are up (scope, shape, hosts)",
                "etc_hosts": "write /etc/netns/NS/hosts so hosts reach each other by name "
                             "(default on; skipped above 256 hosts)",
                "ipv6": "keep IPv6 link-local autoconf on the links (default off: on a big "
                        "bridge its multicast from every host floods every other)"})
def net_topo(c, shape="star", hosts="3", file=None, check=False, down=False, scope=None,
             status=False, etc_hosts=True, ipv6=False, backend=None, explain=False):
    """Build a topology of network namespaces: star, line, ring or a TOML file.

    --down tears it down; until then the namespaces stay for `net-exec`, `ip netns`,
    `nsenter`.

    lab.toml: hosts = ["a", "b", "r"]; [[links]] a = "a" b = "r" (a_addr/b_addr optional,
    subnet = "10.210.0.0/16" is the pool for automatic addresses).
    """
    from recipes import topo
    from nsutil.errors import require_root
    if status:
        for plan in topo.recorded():
            print(f"{plan.scope}  {plan.shape}  {len(plan.hosts)} hosts  "
                  f"{' '.join(plan.all_netns()[:4])}{' ...' if len(plan.all_netns()) > 4 else ''}")
        return
    if down:
        if not explain:
            require_root("net-topo --down")
        with _runner(backend, explain, keep=True) as run:
            topo.down(run, scope)
        return
    plan = topo.plan_file(file, scope, ipv6) if file else topo.plan_shape(shape, hosts, scope,
                                                                         ipv6=ipv6)
    if not explain:
        require_root("net-topo")
    with _runner(backend, explain, keep=True) as run:
        seconds, _ = topo.timed(topo.build, run, plan, etc_hosts=etc_hosts)
        run.say(f"built {len(plan.all_netns())} namespaces and {len(plan.links)} veth pairs "
                f"in {seconds:.2f} s (scope {plan.scope}); first hosts: "
                + ", ".join(f"{h}={plan.hosts[h]}" for h in list(plan.hosts)[:3]))
        run.say(f"try: invoke net-exec {next(iter(plan.hosts))} -- ip addr; "
                f"tear down: invoke net-topo --down --scope {plan.scope}")
        if check:
            result = topo.check(run, plan)
            if result["failed"]:
                raise Exit(f"nsrecipes: check: {len(result['failed'])} of {result['pairs']} pairs "
                           "got no packets through (hint: see the list above)", code=1)



@nsr_task(help={"host": "a host of a topology (h1, or its namespace nsr-SCOPE-h1) or an "
                        "nsrecipes namespace (nsr-a)",
                "scope": "which topology, when several have that host"})
def net_exec(c, host, scope=None, backend=None, explain=False):
    """Run a command in a host's network namespace (invoke net-exec HOST -- CMD ARGS).

    Like `ip netns exec`: /etc/netns/NAME/hosts is seen as /etc/hosts, so hosts reach each
    other by name. Exits with the command's status.
    """
    import shlex
    import sys
    from recipes import topo
    from nsutil.errors import InvalidInput, require_root
    argv = sys.argv[sys.argv.index("--") + 1:] if "--" in sys.argv else shlex.split(c.remainder)
    if not argv:
        raise InvalidInput("no command given", hint="invoke net-exec HOST -- CMD ARGS...")
    if not explain:
        require_root("net-exec")
    ns = topo.resolve_host(host, scope) if not explain else host
    with _runner(backend, explain, keep=True) as run:
        done = topo.exec_in(run, ns, argv, capture=False)
    if not explain and done.returncode:
        raise Exit(code=done.returncode)

# ==== environments (issue 4) ================================================================

_ENV_NAME = "environment name; starts with nsr (e.g. nsr-web)"


def _env_name(name: str, task_name: str) -> str:
    """invoke hands an option given where NAME belongs (``env-rm --help``) over as NAME."""
    if name.startswith("-"):
        from nsutil.errors import InvalidInput
        raise InvalidInput(f"{task_name} needs an environment name before {name}",
                           hint=f"usage: invoke {task_name} NAME [options]; help: "
                                f"invoke --help {task_name}")
    return name


@nsr_task(help={"name": _ENV_NAME,
                "ns": "namespace types, comma-separated, of uts,ipc,pid,mnt,net,user,cgroup "
                      "(default uts,ipc,pid,mnt,net)",
                "hostname": "hostname inside (needs uts)",
                "domainname": "NIS domain name inside (needs uts)",
                "uid_map": "with user: uid_map ranges inside:outside:count, comma-separated "
                           "(default 0:<your uid>:1; 'none' leaves it for env-idmap); checked "
                           "first: no overlap inside or outside, at most 340 ranges",
                "gid_map": "with user: gid_map ranges like --uid-map (default: those of "
                           "--uid-map, else 0:<your gid>:1)"})
def env_create(c, name, ns="uts,ipc,pid,mnt,net", hostname=None, domainname=None,
               uid_map=None, gid_map=None, backend=None, explain=False):
    """Create a named environment whose namespaces stay until env-rm.

    A holder keeps them alive (PID 1 of its PID namespace, reaping orphans); each is bound on
    /run/nsrecipes/NAME/TYPE as `unshare --TYPE=FILE` does, and the net namespace is
    visible to `ip netns` as NAME, with lo up.
    """
    from recipes import env
    name = _env_name(name, "env-create")
    with _runner(backend, explain, keep=True) as run:
        env.create(run, name, ns, hostname=hostname, domainname=domainname,
                   uid_map=uid_map, gid_map=gid_map)


@nsr_task(help={"name": _ENV_NAME, "hostname": "the new hostname inside",
                "domainname": "the new NIS domain name inside"})
def env_hostname(c, name, hostname=None, domainname=None, backend=None, explain=False):
    """Set the hostname and/or domain name inside an environment (its UTS namespace)."""
    from recipes import env
    name = _env_name(name, "env-hostname")
    with _runner(backend, explain, keep=True) as run:
        env.set_hostname(run, name, hostname, domainname)


@nsr_task(help={"name": _ENV_NAME,
                "peer": "the other end: 'host' (default) or another environment's name",
                "ifname": "name of the end inside NAME (default: the first free ethN)",
                "peer_ifname": "name of the other end (on the host: starts with nsr; default "
                               "nsr-v-XXXX; in an environment: the first free ethN)",
                "addr": "address with prefix for NAME's end, e.g. 10.200.0.1/24",
                "peer_addr": "address with prefix for the other end"})
def env_veth(c, name, peer="host", ifname=None, peer_ifname=None, addr=None, peer_addr=None,
             backend=None, explain=False):
    """Add a veth pair from an environment to the host or to another environment."""
    from recipes import env
    name = _env_name(name, "env-veth")
    with _runner(backend, explain, keep=True) as run:
        made = env.add_veth(run, name, peer, ifname=ifname, peer_ifname=peer_ifname,
                            addr=addr, peer_addr=peer_addr)
        run.say(f"{name}:{made['ifname']} <-> {made['peer']}:{made['peer_ifname']}")


@nsr_task(help={"name": _ENV_NAME, "target": "mount point inside (an existing directory)",
                "source": "bind this path (as seen inside) instead of mounting a tmpfs",
                "size": "tmpfs size: 16m, 1g, bytes or 50% (of RAM); 0 (no limit) is refused",
                "readonly": "read-only: the tmpfs, or the bind (with --recursive: every "
                            "mount below it too; needs Linux 5.12+ for mount_setattr)",
                "recursive": "with --source: bind the mounts below it too (mount --rbind)"})
def env_mount(c, name, target, source=None, size=None, readonly=False, recursive=False,
              backend=None, explain=False):
    """Mount a tmpfs (or, with --source, a bind mount) inside an environment only."""
    from recipes import env
    name = _env_name(name, "env-mount")
    with _runner(backend, explain, keep=True) as run:
        env.add_mount(run, name, target, source=source, size=size, readonly=readonly,
                      recursive=recursive)


@nsr_task(help={"name": _ENV_NAME})
def env_mq(c, name, backend=None, explain=False):
    """Make a System V message queue inside an environment (ipcmk -Q in its IPC namespace)."""
    from recipes import env
    name = _env_name(name, "env-mq")
    with _runner(backend, explain, keep=True) as run:
        qid = env.make_queue(run, name)
        run.say(f"Message queue id: {qid}")


@nsr_task(help={"name": _ENV_NAME,
                "uid_map": "uid_map ranges inside:outside:count, comma-separated",
                "gid_map": "gid_map ranges (default: the same as --uid-map)"})
def env_idmap(c, name, uid_map, gid_map=None, backend=None, explain=False):
    """Write the uid/gid maps of an environment's user namespace (once, as the kernel allows)."""
    from recipes import env
    name = _env_name(name, "env-idmap")
    with _runner(backend, explain, keep=True) as run:
        env.set_idmap(run, name, uid_map, gid_map)


@nsr_task(help={"name": _ENV_NAME,
                "cwd": "working directory inside (default: the environment's)"})
def env_exec(c, name, cwd=None, backend=None, explain=False):
    """Run a command in all of an environment's namespaces: env-exec NAME -- CMD ARGS...

    User namespace first, then the rest; the environment's root and working directory.
    Without a command, an interactive shell on this terminal. The exit code is passed
    through.
    """
    import sys
    from recipes import env
    name = _env_name(name, "env-exec")
    argv = sys.argv[sys.argv.index("--") + 1:] if "--" in sys.argv else []
    with _runner(backend, explain, keep=True) as run:
        done = env.exec_in(run, name, argv, capture=False, cwd=cwd)
    if done.returncode:
        raise Exit(code=done.returncode)


@nsr_task(help={"json": "print JSON ({\"environments\": [...]}) instead of a table"})
def env_ls(c, json=False):
    """List environments like lsns: holder pid, state, processes, namespaces with inodes.

    Columns: name, holder pid and whether it is alive, process count, when it was created,
    and each namespace with its inode number (as `lsns` and `readlink /proc/PID/ns/*` show).
    """
    from recipes import env
    rows = env.list_envs()
    print(env.format_json(rows) if json else env.format_table(rows))


@nsr_task(help={"name": _ENV_NAME})
def env_rm(c, name, backend=None, explain=False):
    """Remove an environment: its processes, namespace binds, links, netns name and record.

    Works on dead and half-made environments too.
    """
    from recipes import env
    name = _env_name(name, "env-rm")
    with _runner(backend, explain, keep=True) as run:
        env.remove(run, name)
        run.say(f"removed environment {name}")


# ==== cgroups, copy-on-write, container (issue 5) ===========================================

@nsr_task(help={"memory": "memory limit for the OOM part (default 32M)",
                "pids": "pids limit the fork bomb runs into (default 32)",
                "cpus": "CPU quota for the busy loop, in CPUs (default 0.5)",
                "seconds": "how long the busy loop spins (default 1.0)"})
def cgroup_demo(c, memory="32M", pids="32", cpus="0.5", seconds="1.0", backend=None,
                explain=False):
    """cgroups limit resources: an OOM kill, a fork bomb stopped, a CPU quota measured.

    Three cgroups named nsr-cg-*: a child allocating past the memory limit is killed by the
    OOM killer (memory.oom_control / memory.events count it); a bounded fork bomb stops at
    pids.max; a busy loop gets about quota/period of a CPU. v1, v2 and hybrid hosts.
    """
    from nsutil.limits import parse_number
    seconds = parse_number(seconds, "--seconds", kind=float, minimum=0.1, maximum=60,
                           example="1.0")
    _root_demo("cgroup-demo", "cgroup", backend, explain,
               memory=memory, pids=pids, cpus=cpus, seconds=seconds)


@nsr_task(help={"size_mb": "size of the big file in the base layer, MiB (default 8)"})
def cow_demo(c, size_mb="8", backend=None, explain=False):
    """Copy-on-write with overlayfs: copy-up, whiteouts, and the disk two containers share.

    Two lower layers under /tmp/nsr-cow-*, two overlay mounts over them: a write lands in
    upper and the lower is unchanged, a delete leaves a whiteout (char device 0/0), and the
    disk used by two containers sharing the layers is compared with two full copies.
    """
    from nsutil.limits import parse_number
    _root_demo("cow-demo", "cow", backend, explain,
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
    """
    import shlex
    from recipes import container
    from nsutil.errors import require_root
    argv = sys.argv[sys.argv.index("--") + 1:] if "--" in sys.argv else shlex.split(c.remainder)
    if not explain:
        require_root("container-run")
    with _runner(backend, explain) as run:
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
    with _runner(backend, explain, keep=True) as run:
        path = rootfs.build(run, directory)
        run.say(f"built {path}: try `invoke container-run --rootfs {path} -- sh`")

# ==== tour, doctor, cleanup ================================================================

@nsr_task()
def tour(c, backend=None, explain=False):
    """All demos in the document's order, with headings: the main job. Needs root."""
    from recipes import tour as t
    from nsutil.errors import require_root
    if not explain:
        require_root("tour")
    t.tour(backend=backend, explain=explain)


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
        os.execv(argv[0], [argv[0], "--help", args[given[0]]])


_route_task_help(sys.argv)
