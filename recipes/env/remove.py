"""Environments: removing one (``env-rm``), and finding what is left of them (``cleanup``).

Removal works from what the kernel still holds, not from what the record says: the
processes in the bound namespaces are killed, the environment's veth ends deleted, its
``ip netns`` name and namespace files unbound, its record removed; so it also works after
the holder or the tool itself was killed with SIGKILL (the bound files are the anchor).
Without root nothing is bound and there is no host link nor ``ip netns`` name: the holder
and the processes left in its namespaces are killed, and the record removed; the last
removal also stops the holder of the user namespace the user's environments share.
"""
from __future__ import annotations

import errno as _errno
import fcntl
import os
import shutil
import signal

from nsutil import mountinfo, process, state
from nsutil import procfs
from nsutil import shell as nshell
from nsutil import syscalls as sc
from nsutil.backend import Placeholder, Runner, Step
from nsutil.errors import NotFound, NsrError, SyscallError, require_root
from nsutil.names import is_ours
from nsutil.nstypes import NS_TYPES
from nsutil.rootless import decide
from nsutil.netlink import NETNS_RUN_DIR

from recipes.common.leftover import Leftover
from recipes.env.holder import ours_on_top, release_private_base
from recipes.env.userns import leftovers as userns_leftovers, release_user_holder
from recipes.env.state import (NSFS_DEV, STATE_FILE, TMP_RE, base_dir, check_env_name,
                       env_dir, env_lock, global_lock, members, open_dir,
                       quiet_runner, read_state, rootless_members)


# --- remove ---------------------------------------------------------------------------------

def remove(run: Runner, name: str, *, missing_ok: bool = False) -> dict:
    """Steps: kill the environment's processes, delete its host links, unbind its netns and
    namespace files, remove its record; unmount /run/nsrecipes when it was the last one.

    Works on half-made and dead environments (holder killed, tool killed mid-create).
    Returns what was removed; a missing environment raises :class:`NotFound` unless
    ``missing_ok``.
    """
    check_env_name(name)
    if run.explain:
        _remove_steps_explain(run, name)
        return {}
    if not run.rootless:
        require_root("env-rm")
    try:
        with env_lock(name):
            st = read_state(name)
            if st is None and not os.path.isdir(env_dir(name)):
                raise NotFound(f"environment {name!r} does not exist",
                               hint="already removed? see `invoke env-ls`")
            done = _remove_locked(run, name, env_dir(name), st or {})
    except NotFound:
        if missing_ok:
            return {}
        raise
    if run.rootless:
        release_user_holder(run)
    release_private_base(run)
    return done


def _remove_steps_explain(run: Runner, name: str) -> None:
    pids, link, t = Placeholder("$PIDS"), Placeholder("$IF"), Placeholder("$TYPE")
    if run.rootless:      # nothing bound, no host link, no `ip netns` name
        run.run(Step(f"kill the holder and every process in {name}'s namespaces",
                     argv=["kill", "-KILL", pids]))
        run.run(Step("remove its record", argv=["rm", "-r", env_dir(name)]))
        release_user_holder(run)
        return
    run.run(Step(f"kill every process in {name}'s namespaces", argv=["kill", "-KILL", pids]))
    run.run(Step("delete its ends of its veths (their peers go with them)",
                 argv=["ip", "-n", name, "link", "del", "dev", link]))
    run.run(Step("remove its `ip netns` name", argv=["ip", "netns", "delete", name]))
    run.run(Step("unbind its namespace files",
                 argv=["umount", "-l", Placeholder(f"{env_dir(name)}/{t}")]))
    run.run(Step("remove its record", argv=["rm", "-r", env_dir(name)]))
    release_private_base(run)


def _remove_locked(run: Runner, name: str, path: str, st: dict) -> dict:
    if st.get("rootless"):
        _kill_members(run, name, st, {})
        _remove_record(run, path)
        return {"name": name, "links": [], "netns": None, "ns": {}}
    bound = {}
    for t in NS_TYPES:
        try:
            s = os.stat(os.path.join(path, t))
        except OSError:
            continue
        if s.st_dev == NSFS_DEV:
            bound[t] = s.st_ino
    _kill_members(run, name, st, bound)
    links = _delete_veths(run, name, st, bound)
    links += _delete_host_links(run, st, bound)
    netns = _detach_netns(run, name, st, bound)
    _unbind(run, path, bound)
    _remove_record(run, path)
    return {"name": name, "links": links, "netns": netns, "ns": bound}


def _kill_members(run: Runner, name: str, st: dict, bound: dict[str, int]) -> None:
    """Step: SIGKILL the holder and every process in the environment's namespaces (without
    root: in its user namespace, :func:`rootless_members`), and wait until they are gone."""
    pids = {int(st[k]["pid"]) for k in ("holder", "parent") if procfs.same_process(st.get(k))}

    def inside() -> list[int]:
        return rootless_members(st) if st.get("rootless") else members(bound)
    if not pids or "pid" not in (st.get("types") if st.get("rootless") else bound):
        # with a live PID 1 everything in its PID namespace dies with it; else look
        pids |= set(inside())
    if not pids:
        return

    def kill(_argv: list[str] | None = None) -> None:
        for pid in sorted(pids):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def shell(argv: list[str]) -> None:
        nshell.run_full(argv)  # a process may be gone already: that is fine

    run.run(Step(f"kill the processes of {name} ({len(pids)}: {', '.join(map(str, sorted(pids)))})",
                 argv=["kill", "-KILL", *sorted(pids)], native=kill, shell=shell))

    victims = set(pids)

    def gone() -> bool:
        left = [p for p in victims if procfs.pid_alive(p)]
        if not left:  # and nothing new was forked into the namespaces meanwhile
            left = [p for p in inside() if procfs.pid_alive(p)]
            victims.update(left)
        for p in left:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return not left
    process.wait_for(gone, 10, f"the processes of {name} to exit")


def _delete_host_links(run: Runner, st: dict, bound: dict[str, int]) -> list[str]:
    done = []
    for link in st.get("links", []):
        if not is_ours(link) or not os.path.exists(f"/sys/class/net/{link}"):
            continue
        if not _is_veth(link):
            continue

        def native(n: str = link) -> None:
            from recipes import net
            net.remove_root_link(n)

        def shell(argv: list[str]) -> None:
            done_ = nshell.run_full(argv)
            if done_.returncode and os.path.exists(f"/sys/class/net/{argv[-1]}"):
                done_.check()
        run.run(Step(f"delete its host link {link} (the peer inside goes with it)",
                     argv=["ip", "link", "del", "dev", link], native=native, shell=shell))
        done.append(link)
    return done


def _own_netns(name: str, bound: dict[str, int]) -> bool:
    """True if /run/netns/NAME is this environment's network namespace."""
    try:
        s = os.stat(os.path.join(NETNS_RUN_DIR, name))
    except OSError:
        return False
    return "net" in bound and s.st_dev == NSFS_DEV and s.st_ino == bound["net"]


def _del_link_in(ns: str, ifname: str) -> None:
    """``ip -n NS link del IFNAME``, natively; a link already gone is fine."""
    from nsutil import netlink as nl
    try:
        with nl.Rtnl(nl.rtnl_socket(ns)) as r:
            r.del_link(nl.link_body(ifname), f"ip -n {ns} link del dev {ifname}")
            r.flush()
    except SyscallError as exc:
        if exc.errno_name != "ENODEV":
            raise


def _delete_veths(run: Runner, name: str, st: dict, bound: dict[str, int]) -> list[str]:
    """Delete the environment's ends of its veths now, so their peers (on the host or in
    another environment) go at once instead of when the kernel frees the namespace."""
    if not _own_netns(name, bound):
        return []
    done = []
    for v in st.get("veths", []):
        local = v["ifname"] if v.get("here", True) else v["peer_ifname"]

        def shell(argv: list[str]) -> None:
            nshell.run_full(argv)  # gone already (its peer's environment was removed): fine
        run.run(Step(f"delete {local} in {name} (its peer goes with it)",
                     argv=["ip", "-n", name, "link", "del", "dev", local],
                     native=lambda n=local: _del_link_in(name, n), shell=shell))
        done.append(f"{name}:{local}")
    return done


def _is_veth(link: str) -> bool:
    """A veth's iflink is its peer's index (another namespace's, possibly), not its own."""
    try:
        with open(f"/sys/class/net/{link}/ifindex") as f, open(f"/sys/class/net/{link}/iflink") as g:
            return f.read().strip() != g.read().strip()
    except OSError:
        return False


def _detach_netns(run: Runner, name: str, st: dict, bound: dict[str, int]) -> str | None:
    path = os.path.join(NETNS_RUN_DIR, name)
    try:
        s = os.stat(path)
    except OSError:
        return None
    if s.st_dev != NSFS_DEV:
        # an empty file: ``ip netns attach`` killed between creating and binding it
        if st.get("netns") != name or not stat_is_empty_file(s):
            return None

        def unlink() -> None:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        run.run(Step(f"remove the half-made `ip netns` name {name}", argv=["rm", "-f", path],
                     native=unlink))
        return name
    if "net" not in bound or s.st_ino != bound["net"]:
        return None  # not this environment's netns: leave it

    def native() -> None:
        from nsutil import netlink as nl
        nl.delete_netns(name)
    run.run(Step(f"remove the `ip netns` name {name}", argv=["ip", "netns", "delete", name],
                 native=native))
    return name


def stat_is_empty_file(s: os.stat_result) -> bool:
    """A regular empty file (what ``ip netns add`` creates before binding on it)."""
    import stat as st_
    return st_.S_ISREG(s.st_mode) and s.st_size == 0


def _unbind(run: Runner, path: str, bound: dict[str, int]) -> None:
    for t in sorted(bound, key=lambda k: list(NS_TYPES).index(k)):
        f = os.path.join(path, t)

        def native(f: str = f) -> None:
            try:
                sc.umount(f, sc.MNT_DETACH)
            except SyscallError as exc:
                if exc.errno != _errno.EINVAL:  # EINVAL: not mounted any more
                    raise
        run.run(Step(f"unbind {f} (the namespace goes once nothing uses it)",
                     argv=["umount", "-l", f], native=native))


def _remove_record(run: Runner, path: str) -> None:
    def native(_argv: list[str] | None = None) -> None:
        if mountinfo.below(path):
            raise NsrError(f"{path} still has mounts below it: {', '.join(mountinfo.below(path))}",
                           hint="unmount them (umount -l) and run env-rm again")
        sc.remove_if_present(path, shutil.rmtree, f"rm -r {path!r}")
    run.run(Step(f"remove its record {path}", argv=["rm", "-r", path], native=native,
                 shell=lambda a: (mountinfo.below(path) and native()) or nshell.run(a)))


# --- leftovers (cleanup) --------------------------------------------------------------------

def _remove_tmp(entry: str) -> None:
    """Remove a half-made ``.env-NAME.PID.tmp`` record whose creator is gone."""
    path = os.path.join(base_dir(), entry)
    fd = open_dir(path) if os.path.isdir(path) else None
    if fd is None:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        run = quiet_runner()
        st = state.read_json(os.path.join(path, STATE_FILE)) or {}
        _remove_locked(run, entry, path, st if isinstance(st, dict) else {})
    finally:
        os.close(fd)
    release_private_base(quiet_runner())


def _being_made(path: str, pid: int) -> bool:
    """True while the creator of the half-made record ``path`` (``.env-NAME.PID.tmp``) runs.

    Its pid alone does not tell: once the creator is dead, another process may get that
    pid. The creator makes the directory and flocks it under the state directory's lock, and
    holds that flock until it exits; so, under that lock, a free flock means it is gone."""
    if not procfs.pid_alive(pid):
        return False
    with global_lock():
        try:
            fd = open_dir(path)
        except NsrError:
            return False                    # removed meanwhile
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
    return False


def leftovers() -> list[Leftover]:
    """Every environment (alive, dead or half-made) and the private bind of /run/nsrecipes;
    each ``remove()`` removes exactly that one (see :func:`remove`)."""
    found: list[Leftover] = []
    base = base_dir()
    if not os.path.isdir(base):
        return found
    for entry in sorted(os.listdir(base)):
        m = TMP_RE.match(entry)
        if m:
            if not _being_made(os.path.join(base, entry), int(m.group(2))):
                found.append(Leftover("env", f"{m.group(1)} (half-made: {entry})",
                                      lambda e=entry: _remove_tmp(e)))
            continue
        if entry.startswith(".") or read_state(entry) is None:
            continue
        found.append(Leftover("env", entry, lambda n=entry: _remove_quietly(n)))
    if decide():
        found += userns_leftovers(quiet_runner())
    if not found and ours_on_top(base) and not mountinfo.below(base):
        found.append(Leftover("mount", f"{base} (private bind)",
                              lambda: release_private_base(quiet_runner())))
    return found


def _remove_quietly(name: str) -> None:
    remove(quiet_runner(), name, missing_ok=True)
