"""Environment tasks: env-create, env-exec, env-ls, env-rm and the steps on a live one."""
from __future__ import annotations

from invoke import Exit

from cli.common import command_argv, make_runner, nsr_task, program_name

# ==== environments ==========================================================================

_ENV_NAME = ("environment name, used as given (e.g. web), as `ip netns add` takes one; "
             "the names nsrecipes makes up itself start with nsr")


def _env_name(name: str, task_name: str) -> str:
    """invoke hands an option given where NAME belongs (``env-rm --help``) over as NAME."""
    if name.startswith("-"):
        from nsutil.errors import InvalidInput
        raise InvalidInput(f"{task_name} needs an environment name before {name}",
                           hint=f"usage: invoke {task_name} NAME [options]; help: "
                                f"{program_name()} --help {task_name}")
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
                           "--uid-map, else 0:<your gid>:1)",
                "machine": "create it on this machine of --file's [machines] table (through "
                           "Fabric; its records and cleanup are that machine's)",
                "file": "the lab file whose [machines] table names --machine"})
def env_create(c, name, ns="uts,ipc,pid,mnt,net", hostname=None, domainname=None,
               uid_map=None, gid_map=None, backend=None, explain=False, machine=None, file=None):
    """Create a named environment whose namespaces stay until env-rm.

    A holder keeps them alive (PID 1 of its PID namespace, reaping orphans); each is bound on
    /run/nsrecipes/NAME/TYPE as `unshare --TYPE=FILE` does, and the net namespace is
    visible to `ip netns` as NAME, with lo up.

    Without root: a user namespace owns the others (you are root inside), user and mnt are
    always among them, the holder alone keeps them (nothing is bound on the host, no `ip
    netns` name), and the record is in $XDG_RUNTIME_DIR/nsrecipes. All your environments
    share ONE user namespace (you mapped to 0), kept by a small holder of yours (`unshare
    --user --map-root-user -- sleep infinity`, recorded in userns.json; it goes with your
    last environment), so env-veth can link them; each new holder joins it (`nsenter -t
    USERNS --user --preserve-credentials -- unshare --uts ...`). With --uid-map an
    environment has a user namespace of its own; a map beyond your own id needs an
    /etc/subuid range and newuidmap (package uidmap).
    """
    from recipes import env
    name = _env_name(name, "env-create")
    if machine:
        from recipes.labs.machines import controller as machines
        m = machines.machine_from_file(file, machine)
        machines.env_remote(m, ["env-create", name, "--ns", ns, "--backend", backend or "native"]
                            + (["--hostname", hostname] if hostname else []))
        print(f"environment {name} is ready on machine {machine} ({m['ssh']})")
        return
    with make_runner(backend, explain, keep=True) as run:
        env.create(run, name, ns, hostname=hostname, domainname=domainname,
                   uid_map=uid_map, gid_map=gid_map)


@nsr_task(help={"name": _ENV_NAME, "hostname": "the new hostname inside",
                "domainname": "the new NIS domain name inside"})
def env_hostname(c, name, hostname=None, domainname=None, backend=None, explain=False):
    """Set the hostname and/or domain name inside an environment (its UTS namespace)."""
    from recipes import env
    name = _env_name(name, "env-hostname")
    with make_runner(backend, explain, keep=True) as run:
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
    """Add a veth pair from an environment to the host or to another environment.

    Without root, between two environments only: your environments share one user
    namespace, and as root there the pair is made from inside NAME's network namespace
    (`nsenter -t PID --user --preserve-credentials --net -- ip link add ... peer ... netns
    /proc/PEER/ns/net`). An end on the host needs root (CAP_NET_ADMIN there), and an
    environment made with --uid-map has a user namespace of its own: both are refused.
    """
    from recipes import env
    name = _env_name(name, "env-veth")
    with make_runner(backend, explain, keep=True) as run:
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
    with make_runner(backend, explain, keep=True) as run:
        env.add_mount(run, name, target, source=source, size=size, readonly=readonly,
                      recursive=recursive)


@nsr_task(help={"name": _ENV_NAME})
def env_mq(c, name, backend=None, explain=False):
    """Make a System V message queue inside an environment (ipcmk -Q in its IPC namespace)."""
    from recipes import env
    name = _env_name(name, "env-mq")
    with make_runner(backend, explain, keep=True) as run:
        qid = env.make_queue(run, name)
        run.say(f"Message queue id: {qid}")


@nsr_task(help={"name": _ENV_NAME,
                "uid_map": "uid_map ranges inside:outside:count, comma-separated",
                "gid_map": "gid_map ranges (default: the same as --uid-map)"})
def env_idmap(c, name, uid_map, gid_map=None, backend=None, explain=False):
    """Write the uid/gid maps of an environment's user namespace (once, as the kernel allows).

    Without root: your own id as one line, or ids of your /etc/subuid and /etc/subgid ranges
    through newuidmap/newgidmap (package uidmap).
    """
    from recipes import env
    name = _env_name(name, "env-idmap")
    with make_runner(backend, explain, keep=True) as run:
        env.set_idmap(run, name, uid_map, gid_map)


@nsr_task(help={"name": _ENV_NAME,
                "cwd": "working directory inside (default: the environment's)",
                "machine": "run it in the environment on this machine of --file's [machines]",
                "file": "the lab file whose [machines] table names --machine"})
def env_exec(c, name, cwd=None, backend=None, explain=False, machine=None, file=None):
    """Run a command in all of an environment's namespaces: env-exec NAME -- CMD ARGS...

    User namespace first, then the rest; the environment's root and working directory.
    Without a command, an interactive shell on this terminal. The exit code is passed
    through.
    """
    import sys
    from recipes import env
    name = _env_name(name, "env-exec")
    argv = command_argv("env-exec", name, required=False)
    if not argv and not machine:
        _check_shell_stdin(name)
    if machine:
        from recipes.labs.machines import controller as machines
        s = machines.env_remote(machines.machine_from_file(file, machine),
                                ["env-exec", name, "--", *argv], passthrough=sys.stdout)
        if s.result.exited:
            raise Exit(code=s.result.exited)
        return
    with make_runner(backend, explain, keep=True, announce_owner=explain) as run:
        done = env.exec_in(run, name, argv, capture=False, cwd=cwd)
    if done.returncode:
        raise Exit(code=done.returncode)


def _check_shell_stdin(name: str) -> None:
    """env-exec without a command opens a shell: refuse a stdin nobody types on (/dev/null,
    a file), where the shell would end at once with status 0 and nothing run."""
    from nsutil.errors import InvalidInput
    from nsutil.lesson import stdin_kind
    kind = stdin_kind()
    if kind not in ("tty", "pipe"):
        raise InvalidInput(f"env-exec {name}: no command given, and stdin is {kind}, not a "
                           "terminal for a shell",
                           hint=f"{program_name()} env-exec {name} -- CMD ARGS...")


_MACHINE_HELP = {"machine": "on this machine of --file's [machines] table (through Fabric)",
                 "file": "the lab file whose [machines] table names --machine"}


def _on_machine(machine: str, file: str | None, args: list[str], passthrough=None):
    """Run ``recipes.ops.agent ARGS`` on ``machine`` of lab ``file`` (``env-* --machine``)."""
    from recipes.labs.machines import controller as machines
    return machines.env_remote(machines.machine_from_file(file, machine), args,
                               passthrough=passthrough)


@nsr_task(help={"json": "print JSON ({\"environments\": [...]}) instead of a table",
                **_MACHINE_HELP})
def env_ls(c, json=False, machine=None, file=None):
    """List environments like lsns: holder pid, state, processes, namespaces with inodes.

    Root lists root's environments; a user lists their own (the state directory is theirs).

    Columns: name, holder pid and whether it is alive, process count, when it was created,
    and each namespace with its inode number (as `lsns` and `readlink /proc/PID/ns/*` show).
    """
    import sys
    from recipes import env
    if machine:
        _on_machine(machine, file, ["env-ls"] + (["--json"] if json else []), sys.stdout)
        return
    rows = env.list_envs()
    print(env.format_json(rows) if json else env.format_table(rows))


@nsr_task(help={"name": _ENV_NAME, **_MACHINE_HELP})
def env_rm(c, name, backend=None, explain=False, machine=None, file=None):
    """Remove an environment: its processes, namespace binds, links, netns name and record.

    Works on dead and half-made environments too.
    """
    from recipes import env
    name = _env_name(name, "env-rm")
    if machine:
        _on_machine(machine, file, ["env-rm", name])
        print(f"removed environment {name} on machine {machine}")
        return
    with make_runner(backend, explain, keep=True) as run:
        env.remove(run, name)
        run.say(f"removed environment {name}")
