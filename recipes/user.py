"""User namespace (document section "user namespace"; flag CLONE_NEWUSER).

A user namespace maps ids: ``0 1000 1`` in /proc/PID/uid_map makes uid 0 inside be uid
1000 outside. The process is "root" inside -- it has every capability there -- but to the
host it is uid 1000, so it cannot write a file the host's root owns.

The document's code has two bugs that show in its output: ``set_uid_map`` ignores its
``pid`` argument (it writes ``/proc/getpid()/uid_map``), and
``printf("eUID = %ld", (long) geteuid)`` prints the *address* of geteuid (4196720), not the
uid. This recipe writes the child's map from the parent, by pid, and prints the real ids.
"""
from __future__ import annotations

import os
import tempfile

from nsutil import caps, idmap, process
from nsutil import shell as nshell
from nsutil.backend import Runner, Step
from nsutil.errors import InvalidInput
from nsutil.rootless import require_namespaces
from nsutil.names import check_id

from recipes import uts
from recipes.common.holder import enter_argv, start_holder

SECTION = "user namespace"


def _map_display(pid, which: str, maps: list[idmap.IdMap]) -> str:
    lines = "\\n".join(m.line() for m in maps)
    return f"printf '{lines}\\n' > /proc/{pid}/{which}_map"


def deny_setgroups(run: Runner, holder: process.Holder) -> None:
    """Step: ``echo deny > /proc/PID/setgroups`` (needed before an unprivileged gid_map)."""
    write = lambda *_a: idmap.deny_setgroups(holder.pid)  # noqa: E731
    run.run(Step("deny setgroups (required before an unprivileged gid_map)",
                 display=f"echo deny > /proc/{holder.pid}/setgroups", native=write, shell=write))


def write_uid_map(run: Runner, holder: process.Holder, maps: list[idmap.IdMap]) -> None:
    """Step: write the holder's /proc/PID/uid_map (from the parent, by pid)."""
    write = lambda *_a: idmap.write_uid_map(holder.pid, maps)  # noqa: E731
    run.run(Step(f"write uid_map: {', '.join(m.line() for m in maps)}",
                 display=_map_display(holder.pid, "uid", maps), native=write, shell=write))


def write_gid_map(run: Runner, holder: process.Holder, maps: list[idmap.IdMap]) -> None:
    """Step: write the holder's /proc/PID/gid_map."""
    write = lambda *_a: idmap.write_gid_map(holder.pid, maps)  # noqa: E731
    run.run(Step(f"write gid_map: {', '.join(m.line() for m in maps)}",
                 display=_map_display(holder.pid, "gid", maps), native=write, shell=write))


def _ids_and_caps() -> dict:
    return {"euid": os.geteuid(), "egid": os.getegid(), "caps": caps.names(caps.read_caps()["CapEff"])}


def parse_status(text: str) -> dict:
    """Parse the Uid/Gid/CapEff lines of /proc/self/status into what :func:`_ids_and_caps` returns."""
    out: dict = {"caps": []}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key == "Uid":
            out["euid"] = int(value.split()[1])
        elif key == "Gid":
            out["egid"] = int(value.split()[1])
        elif key == "CapEff":
            out["caps"] = caps.names(int(value.strip(), 16))
    return out


def who_am_i(run: Runner, holder: process.Holder) -> dict:
    """Step: effective uid/gid and capabilities of a process inside (from /proc/self/status)."""
    pid = holder.pid
    return run.run(Step("show effective uid/gid and capabilities inside",
                        argv=enter_argv(holder, "user", ["grep", "-E", "^(Uid|Gid|CapEff):",
                                                         "/proc/self/status"]),
                        native=lambda: process.call_in(pid, ["user"], _ids_and_caps),
                        parse=parse_status, placeholder={"euid": 0, "egid": 0, "caps": []}))


def try_write(run: Runner, holder: process.Holder, path: str) -> bool:
    """Step: try to open a host file for appending (writing nothing) as "root" inside."""
    def native() -> bool:
        def attempt() -> bool:
            try:
                os.close(os.open(path, os.O_WRONLY | os.O_APPEND))
                return True
            except PermissionError:
                return False
        return process.call_in(holder.pid, ["user"], attempt)
    done = run.run(Step(f"try to open {path} for writing as uid 0 inside",
                        argv=enter_argv(holder, "user", ["sh", "-c", ': >> "$1"', "sh", path]),
                        native=native, shell=lambda argv: nshell.run_full(argv).returncode == 0,
                        placeholder=False))
    return done


def _root_owned_file(run: Runner) -> str:
    """A root-owned 0644 file to try to write: our own when root, /etc/passwd otherwise."""
    if os.geteuid() != 0:
        return "/etc/passwd"
    if run.explain:
        return "/tmp/nsr-user-XXXX/owned-by-host-root"
    scratch = tempfile.mkdtemp(prefix="nsr-user-")
    path = os.path.join(scratch, "owned-by-host-root")
    with open(path, "w") as f:
        f.write("host root's file\n")
    os.chmod(scratch, 0o755)
    os.chmod(path, 0o644)
    remove = lambda *_a: (os.unlink(path), os.rmdir(scratch))  # noqa: E731
    run.defer(Step(f"remove {scratch}", argv=["rm", "-r", scratch], native=remove, shell=remove))
    return path


def demo(run: Runner, uid: int | str | None = None, gid: int | str | None = None,
         hostname: str = "NewNamespace") -> dict:
    """The document's user-namespace program, corrected: uid 0 inside maps to ``uid`` outside.

    As root ``uid`` defaults to 1000 (as in the document); unprivileged users can map only
    their own uid, which is the default for them. Returns what was observed.
    """
    me = os.geteuid()
    outside = check_id(uid if uid is not None else (1000 if me == 0 else me), what="uid")
    outside_gid = check_id(gid if gid is not None else (outside if me == 0 else os.getegid()), what="gid")
    if me != 0 and (outside != me or outside_gid != os.getegid()):
        raise InvalidInput(f"as uid {me} you can map only your own ids ({me}/{os.getegid()}), "
                           f"not {outside}/{outside_gid}", hint="run as root, or drop --uid/--gid")
    # the kernel's rules for the maps, before anything is made (nsutil.idmap.check_maps)
    uid_map = idmap.check_maps([idmap.IdMap(0, outside, 1)], "--uid")
    gid_map = idmap.check_maps([idmap.IdMap(0, outside_gid, 1)], "--gid")
    if not run.explain:
        # root: a layer that refuses namespaces; without root: a sysctl that refuses user
        # namespaces -- said before anything is made
        require_namespaces("user-demo")
    run.heading(f"{SECTION} (CLONE_NEWUSER): user and group IDs")
    run.say("程序开始：")
    holder = start_holder(run, "user,uts")
    if me != 0:
        deny_setgroups(run, holder)
    write_uid_map(run, holder, uid_map)
    write_gid_map(run, holder, gid_map)
    uts.set_hostname(run, holder, hostname)
    run.say("在子进程中！")
    seen = who_am_i(run, holder)
    cap_text = "= " + ",".join(seen["caps"]) + "+ep" if seen["caps"] else "="
    run.say(f"eUID = {seen['euid']}; eGID = {seen['egid']}; capabilities: {cap_text}")
    run.learner_shell(hint="id; cat /proc/$$/uid_map; touch /etc/nsr-try (denied); exit")
    run.say("   (the document printed eUID = 4196720: `(long) geteuid` without () is the address "
            "of the function; and eGID = 65534: its child wrote its own gid_map without first "
            "denying setgroups, the write failed, and an unmapped gid shows as the overflow gid)")
    path = _root_owned_file(run)
    wrote = try_write(run, holder, path)
    hint = "denied" if not wrote else "ALLOWED (unexpected!)"
    run.say(f"[root@{hostname}]# : >> {path}\n  -> {hint}: uid 0 inside is uid {outside} "
            "outside, so it cannot write a file owned by the host's root")
    outside_view = idmap.read_map(holder.pid, "uid") if not run.explain else []
    return {"euid": seen["euid"], "egid": seen["egid"], "caps": seen["caps"],
            "wrote_root_file": wrote, "uid_map": [m.line() for m in outside_view],
            "outside_uid": outside}
