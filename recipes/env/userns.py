"""Environments without root: one user namespace for all of a user's environments.

Without root, a veth between two environments needs CAP_NET_ADMIN in both network
namespaces; a user has it only as root of the user namespace that owns them. So, as rootless
podman does with its pause process, a user's environments share ONE user namespace (the
user mapped to 0), kept by a small per-user holder::

    unshare --user --map-root-user -- sleep infinity &             # once per user
    nsenter -t USERNS --user --preserve-credentials -- unshare --uts --net ... --fork ...
    nsenter -t A --user --preserve-credentials --net -- \\
        ip link add name eth0 type veth peer name eth0 netns /proc/B/ns/net

The per-user holder is recorded in the user's state directory (``userns.json``: its pid and
start time, so a pid used again by another process is not trusted); it is stopped when the
last environment is removed, and ``cleanup`` removes a stale one. Environments made with
id maps of their own (``--uid-map``) keep a user namespace of their own.
"""
from __future__ import annotations

import os
from typing import Any

from nsutil import process, procfs, programs, state
from nsutil import syscalls as sc
from nsutil.backend import Placeholder, Runner, Step
from nsutil.errors import NsrError
from nsutil.names import check_ifname
from nsutil.nstypes import parse_types
from nsutil.rootless import UNSHARE_OPTIONS

from recipes.common.holder import enter_argv, join_types, nsenter_argv
from recipes.common.leftover import Leftover
from recipes.env.state import (base_dir, env_entries, global_lock, holder_inodes,
                               holder_of)

#: the per-user holder's record, in the user's state directory
USERNS_FILE = "userns.json"
USERNS_KIND = "userns"
#: the shell form of the per-user holder
USER_HOLDER_ARGV = ["unshare", *UNSHARE_OPTIONS, "--", "sleep", "infinity"]


# --- the per-user holder --------------------------------------------------------------------

def record_path() -> str:
    """``$XDG_RUNTIME_DIR/nsrecipes/userns.json``."""
    return os.path.join(base_dir(), USERNS_FILE)


def read_record() -> dict | None:
    """The per-user holder's record (``{"kind", "pid", "start", "userns"}``), or None."""
    try:
        data = state.read_json(record_path())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("kind") == USERNS_KIND else None


def live_holder() -> dict | None:
    """The record while its holder runs (the same process: pid and start time), else None."""
    rec = read_record()
    return rec if rec is not None and procfs.same_process(rec) else None


def shared_userns() -> int | None:
    """The inode of the user namespace the user's environments share (None: not kept)."""
    rec = live_holder()
    return rec.get("userns") if rec else None


def _spawn_shell_holder() -> dict:
    """``unshare --user --map-root-user -- sleep infinity`` in a session of its own (stdio on
    /dev/null); waits until it sleeps in its new user namespace."""
    null = os.open(os.devnull, os.O_RDWR)
    try:
        pid = os.posix_spawn(programs.which("unshare") or "unshare", USER_HOLDER_ARGV,
                             dict(os.environ), setsid=True,
                             file_actions=[(os.POSIX_SPAWN_DUP2, null, fd) for fd in (0, 1, 2)])
    finally:
        os.close(null)
    mine = os.stat("/proc/self/ns/user").st_ino

    def ready() -> int | None:
        if not procfs.pid_alive(pid):
            raise NsrError(f"`{' '.join(USER_HOLDER_ARGV)}` exited with "
                           f"{process.wait_child(pid)}", hint="see `invoke doctor`")
        if procfs.started_pid(pid, "sleep", False) is None:
            return None
        try:
            return pid if os.stat(f"/proc/{pid}/ns/user").st_ino != mine else None
        except OSError:
            return None
    try:
        process.wait_for(ready, 10, "the holder of your user namespace to start")
    except BaseException:
        process.kill_and_reap(pid, pid)
        raise
    return _identity(pid)


def _spawn_native_holder() -> dict:
    """fork; the child makes a user namespace mapping this user to 0 and sleeps there."""
    holder = process.spawn_holder(0, detach=True, quiet=True, name="nsr-userns",
                                  userns_first=True)
    return _identity(holder.pid)


def _identity(pid: int) -> dict:
    return dict(procfs.identity(pid), kind=USERNS_KIND,
                userns=os.stat(f"/proc/{pid}/ns/user").st_ino)


def user_holder(run: Runner) -> int | Placeholder:
    """Step: the pid of the holder of the user namespace all of this user's environments
    share; started (``unshare --user --map-root-user -- sleep infinity``) when none runs."""
    if run.explain:
        return run.run(Step("start the holder of your user namespace (once: your "
                            "environments share it, you are root in it) unless it runs",
                            argv=USER_HOLDER_ARGV, display=" ".join(USER_HOLDER_ARGV) + " &",
                            placeholder=Placeholder("$USERNS")))
    with global_lock():
        rec = live_holder()
        if rec is not None:
            run.say(f"your environments share the user namespace kept by pid {rec['pid']} "
                    f"({record_path()}): this one joins it")
            return rec["pid"]
        rec = run.run(Step(
            "start the holder of your user namespace: your environments share it (you are "
            "root in it), so a veth may link them",
            argv=USER_HOLDER_ARGV, display=" ".join(USER_HOLDER_ARGV) + " &",
            native=lambda: process.fork_call(_spawn_native_holder, "start the userns holder",
                                             detached=True),
            shell=lambda _a: process.fork_call(_spawn_shell_holder,
                                               "start the userns holder", detached=True)))
        state.atomic_write_json(record_path(), rec)
        run.say(f"your environments share one user namespace, kept by pid {rec['pid']} "
                f"({record_path()}); it goes with your last environment")
        return rec["pid"]


def userns_prefix(upid: int | Placeholder, argv: list) -> list:
    """``nsenter -t USERNS --user --preserve-credentials -- argv``."""
    return nsenter_argv(upid, parse_types("user"), argv)


def release_user_holder(run: Runner) -> None:
    """Step: once no environment is left, stop the per-user holder and remove its record."""
    if run.explain:
        run.run(Step("no environment left: stop the holder of your user namespace",
                     argv=["kill", "-KILL", Placeholder("$USERNS")]))
        return
    with global_lock():
        if env_entries():
            return
        _stop(run, read_record())


def _stop(run: Runner, rec: dict | None) -> None:
    """Kill the recorded holder if it is still that process; remove the record (lock held)."""
    if rec is not None and procfs.same_process(rec):
        pid = rec["pid"]
        run.run(Step(f"no environment is left: stop the holder of your user namespace "
                     f"(pid {pid})", argv=["kill", "-KILL", pid],
                     native=lambda: process.kill_and_reap(pid, pid),
                     shell=lambda _a: process.kill_and_reap(pid, pid)))
    sc.remove_if_present(record_path())


def leftovers(run: Runner) -> list[Leftover]:
    """The per-user holder when it is stale: dead, or no environment left to share it."""
    rec = read_record()
    if rec is None and not os.path.lexists(record_path()):
        return []
    if rec is not None and procfs.same_process(rec) and env_entries():
        return []

    def remove() -> None:
        with global_lock():
            again = read_record()
            if again is None or not procfs.same_process(again) or not env_entries():
                _stop(run, again)
    return [Leftover("userns", f"holder of your user namespace (pid "
                               f"{(rec or {}).get('pid')}, {USERNS_FILE})", remove)]


# --- a veth between two environments of the shared user namespace ---------------------------

def check_shared(name: str, st: dict, peer: str, peer_st: dict | None) -> None:
    """Refuse in one line unless ``name`` (and ``peer``, once it is read) live in the one user
    namespace: root of an environment's own user namespace has no CAP_NET_ADMIN in
    another's network namespace."""
    mine = holder_inodes(st).get("user")
    shared = shared_userns()
    theirs = holder_inodes(peer_st).get("user") if peer_st else None
    if mine is not None and (mine == shared or mine == theirs):
        if peer_st is None or theirs == mine:
            return
        own, other = peer, name
    else:
        own, other = name, peer
    raise NsrError(f"env-veth {name} --peer {peer}: {own} has a user namespace of its own "
                   f"(made with its own id maps), and root there has no CAP_NET_ADMIN in "
                   f"{other}'s network namespace",
                   hint="create both without --uid-map (your environments then share one user "
                        "namespace, you mapped to 0), or run as root")


def links_of(st: dict) -> set[str]:
    """Names of the links in the environment's network namespace (``/proc/PID/net/dev``)."""
    try:
        with open(f"/proc/{st['holder']['pid']}/net/dev") as f:
            return {line.split(":")[0].strip() for line in f.readlines()[2:]}
    except (OSError, KeyError, TypeError):
        return set()


def veth_pair(run: Runner, st: dict, peer_st: dict, ifname: str, peer_ifname: str,
              addr: str | None, peer_addr: str | None) -> None:
    """Steps: as root of the shared user namespace, from inside the first environment's
    network namespace, ``ip link add name IF type veth peer name PEER netns
    /proc/B/ns/net``; then the addresses and ``up`` in each (natively over rtnetlink the
    same way)."""
    from recipes import net
    check_ifname(ifname)
    check_ifname(peer_ifname)
    a, b = holder_of(st), holder_of(peer_st)
    peer_ns = f"/proc/{b.pid}/ns/net"
    add = ["ip", "link", "add", "name", ifname, "type", "veth", "peer", "name", peer_ifname,
           "netns", peer_ns]
    run.run(Step(f"create veth pair {ifname} ({st['name']}) <-> {peer_ifname} "
                 f"({peer_st['name']}) as root of your user namespace, both ends in place",
                 argv=enter_argv(a, "net", add),
                 native=lambda: _native_pair(a, peer_ns, ifname, peer_ifname, " ".join(add))))
    for holder, env, link, cidr in ((a, st["name"], ifname, addr),
                                    (b, peer_st["name"], peer_ifname, peer_addr)):
        if cidr:
            run.run(Step(f"address {cidr} on {link} ({env})",
                         argv=enter_argv(holder, "net", ["ip", "addr", "add", cidr, "dev", link]),
                         native=lambda h=holder, n=link, c=cidr: _call_net(
                             h, net.native_addr, None, n, c)))
        run.run(Step(f"bring {link} up ({env})",
                     argv=enter_argv(holder, "net", ["ip", "link", "set", "dev", link, "up"]),
                     native=lambda h=holder, n=link: _call_net(h, net.native_up, None, n)))


def _call_net(holder: process.Holder, fn: Any, *args: Any) -> None:
    """``fn(*args)`` in the holder's user and network namespaces (the native nsenter)."""
    process.call_in(holder.pid, join_types(holder, "net"), lambda: fn(*args))


def _native_pair(a: process.Holder, peer_ns: str, ifname: str, peer_ifname: str,
                 what: str) -> None:
    """The native ``ip link add ... veth peer ... netns``: RTM_NEWLINK sent from inside
    ``a``'s network namespace, the peer's namespace given by an fd opened outside."""
    from nsutil import netlink as nl
    from nsutil.errors import SyscallError
    try:
        fd = os.open(peer_ns, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise SyscallError.from_oserror(f"open({peer_ns!r})", exc) from None

    def make() -> None:
        with nl.Rtnl(nl.rtnl_socket(None)) as r:
            r.new_link(nl.link_body(ifname, kind="veth",
                                    peer=nl.link_body(peer_ifname, netns_fd=fd)), what)
            r.flush()
    try:
        process.call_in(a.pid, join_types(a, "net"), make)
    finally:
        os.close(fd)
