"""doctor's layers against the real thing: a seccomp filter like Docker's (tests/
seccompfilter.py, libseccomp), dropped capabilities (capset and the bounding set), a
container-like sandbox (its own PID namespace and /proc, /proc/sys and the cgroup tree
read-only, as Docker mounts them), a user namespace whose uid 0 is not the host's, and an
unprivileged user. Each is made for real in a forked child, which then runs the doctor's
checks (a new interpreter per case would cost the emulated VM a minute); two tests go
through the CLI (`doctor --json`, its exit status and one line). The one fake (Ubuntu's
AppArmor sysctl, which this kernel cannot have) says so."""
from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import subprocess
import sys
from typing import Callable

import pytest

import helpers
import seccompfilter
from nsutil import cgroupfs, idmap, process
from nsutil import syscalls as sc
from recipes.ops import doctor

HERE = os.path.dirname(os.path.abspath(__file__))
SECCOMP_EXEC = [sys.executable, os.path.join(HERE, "seccomp_exec.py"), "--"]
NO_SYS_ADMIN = ["setpriv", "--bounding-set", "-sys_admin,-net_admin", "--inh-caps",
                "-sys_admin,-net_admin", "--"]
CAP_NET_ADMIN, CAP_SYS_ADMIN = 12, 21
#: doctor makes a dozen attempts in children and starts a dozen tools: in the emulated VM,
#: shared with other runs, one `invoke doctor` has taken 60 to 170 s
DOCTOR_TIMEOUT = 600


@pytest.fixture(autouse=True)
def _root():
    if os.geteuid() != 0:
        pytest.skip("the probes are compared as root")
    if ctypes.util.find_library("seccomp") is None:
        pytest.skip("needs libseccomp (apt-get install libseccomp2)")


def _rows(checks: list[doctor.Check]) -> dict[str, doctor.Check]:
    """The rows by name; every row that is not ok says what it blocks and the fix."""
    for c in checks:
        assert c.layer, c
        if not c.ok:
            assert c.blocks and c.hint, c
    return {c.name: c for c in checks}


def _checks_after(setup: Callable[[], None]) -> dict[str, doctor.Check]:
    """The doctor's rows as a forked child sees them after ``setup`` (which changes only
    that child: a filter, its capabilities, its namespaces)."""
    def child() -> list[doctor.Check]:
        setup()
        return doctor.run_checks()
    return _rows(process.fork_call(child, "doctor in a child"))


def _docker_default() -> None:
    seccompfilter.load("docker")
    seccompfilter.drop_caps(CAP_SYS_ADMIN, CAP_NET_ADMIN)


def test_this_host_every_layer_lets_through():
    """Root on this host (and in the VM guest), through the CLI: who, capabilities, seccomp,
    LSM, mounts and the namespaces all ok, and doctor exits 0 exactly when no required row
    fails; every row of the JSON has its layer, and blocks and fix where it is not ok."""
    proc = helpers.cli("doctor", "--json", timeout=DOCTOR_TIMEOUT)
    rows = {r["name"]: r for r in json.loads(proc.stdout)}
    for row in rows.values():
        assert set(row) == {"layer", "name", "status", "ok", "required", "detail", "blocks",
                            "fix"}, row
        assert row["status"] == ("ok" if row["ok"] else "MISSING" if row["required"] else "warn")
        assert row["ok"] or (row["blocks"] and row["fix"]), row
    for name in ("root", "capabilities", "seccomp", "LSM", "mount in a new namespace",
                 "namespace uts", "namespace pid", "namespace mnt", "namespace net",
                 "unprivileged user namespace", "cgroup delegation", "own PID namespace"):
        assert rows[name]["ok"], rows[name]
    assert rows["root"]["detail"].startswith("euid 0 in the initial user namespace")
    assert rows["seccomp"]["detail"] == "Seccomp: 0 (no filter)"
    initial = os.stat("/proc/self/ns/pid").st_ino == 0xEFFFFFFC   # PROC_PID_INIT_INO
    assert rows["own PID namespace"]["detail"].startswith(
        "no: the host's initial one" if initial else "yes ("), rows["own PID namespace"]
    assert rows["namespace uts"]["detail"].endswith("made in a child")
    blocking = [n for n, r in rows.items() if r["required"] and not r["ok"]]
    assert (proc.returncode == 0) == (not blocking), (blocking, proc.stderr)
    layers = [r["layer"] for r in rows.values()]
    assert layers[:3] == ["who", "who", "capabilities"] and "seccomp" in layers


def test_docker_default_through_the_cli_blocks_and_says_so():
    """The filter and no CAP_SYS_ADMIN/CAP_NET_ADMIN (setpriv), through the CLI: exit 1
    and one line naming the blocking rows, capabilities and seccomp first."""
    proc = helpers.cli("doctor", "--json", prefix=SECCOMP_EXEC + NO_SYS_ADMIN,
                       timeout=DOCTOR_TIMEOUT)
    rows = {r["name"]: r for r in json.loads(proc.stdout)}
    assert rows["seccomp"]["status"] == rows["capabilities"]["status"] == "MISSING"
    line = helpers.one_line_error(proc)
    blocked = line.split("blocked by ", 1)[1].split(" (hint:")[0].split(", ")
    assert blocked[:2] == ["capabilities", "seccomp"] and "namespace uts" in blocked, line
    assert line.endswith("(hint: each row above says what it blocks and the fix)")


def test_docker_default_names_seccomp_and_capabilities_and_their_fixes():
    """The filter and no CAP_SYS_ADMIN/CAP_NET_ADMIN: those two rows block, each with its
    fix, and the namespace rows say which layers refused them (not capabilities for the user
    namespace, which needs none)."""
    rows = _checks_after(_docker_default)
    seccomp, caps = rows["seccomp"], rows["capabilities"]
    assert seccomp.status == "MISSING", seccomp
    assert seccomp.detail.startswith("Seccomp: 2 (a filter, ") and "the filter answers " \
        "unshare: EPERM; setns: EPERM; mount: EPERM; umount2: EPERM; clone: EPERM; clone3: " \
        "ENOSYS" in seccomp.detail, seccomp
    assert "--security-opt seccomp=unconfined" in seccomp.hint
    assert caps.status == "MISSING" and "cap_sys_admin, cap_net_admin" in caps.detail
    assert caps.hint == ("start the container with --cap-add SYS_ADMIN --cap-add NET_ADMIN, "
                         "or --privileged"), caps
    uts, user = rows["namespace uts"], rows["namespace user"]
    assert uts.detail.endswith("unshare in a child: EPERM: refused by seccomp and "
                               "capabilities"), uts
    assert user.detail.endswith("unshare in a child: EPERM: refused by seccomp"), user
    assert "--privileged" in uts.hint and "seccomp=unconfined" in user.hint
    assert rows["mount in a new namespace"].status == "MISSING"
    assert rows["LSM"].ok                      # not blamed: seccomp and caps refused first
    assert [c.name for c in doctor.blocking(list(rows.values()))][:2] == ["capabilities",
                                                                            "seccomp"]


def test_a_filter_is_judged_by_what_it_refuses_not_by_its_mode():
    """Seccomp: 2 with a filter that answers clone3 alone (glibc falls back to clone): ok,
    and the namespaces are made; one that lets unshare through still refuses the mount."""
    rows = _checks_after(lambda: seccompfilter.load("only-clone3"))
    seccomp = rows["seccomp"]
    assert seccomp.ok and "only clone3 is answered (clone3: ENOSYS)" in seccomp.detail
    assert seccomp.detail.startswith("Seccomp: 2 ")
    assert rows["namespace pid"].ok and rows["mount in a new namespace"].ok
    only_mount = _checks_after(lambda: seccompfilter.load("allow-unshare"))
    assert only_mount["namespace uts"].ok                  # unshare itself passes ...
    mount = only_mount["mount in a new namespace"]
    assert not mount.ok and "refused by seccomp" in mount.detail, mount    # ... the mount not


def _read_only_bind(path: str) -> None:
    sc.mount(path, path, None, sc.MS_BIND)
    sc.mount(None, path, None, sc.MS_REMOUNT | sc.MS_BIND | sc.MS_RDONLY)


def _as_a_container() -> list[doctor.Check]:
    """In a new PID and mount namespace (this is PID 1 there): a /proc of its own, and
    /proc/sys and the cgroup tree nsrecipes uses bound read-only, as Docker mounts them."""
    layout = cgroupfs.detect()
    sc.make_propagation("/", "private", recursive=True)
    sc.mount("proc", "/proc", "proc", sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC)
    _read_only_bind("/proc/sys")
    _read_only_bind(layout.v2 if layout.mode == "unified" else layout.v1["memory"])
    return doctor.run_checks()


def test_a_container_is_seen_and_its_read_only_trees_named():
    rows = _rows(process.spawn(_as_a_container, sc.CLONE_NEWNS | sc.CLONE_NEWPID))
    own = rows["own PID namespace"]
    assert own.ok and own.detail.startswith("yes (pid:[") and "a container" in own.detail
    procsys = rows["/proc/sys"]
    assert procsys.status == "warn" and procsys.detail.startswith("read-only; ")
    assert "EROFS" in procsys.detail and "--privileged" in procsys.hint, procsys
    deleg = rows["cgroup delegation"]
    assert deleg.status == "MISSING" and "EROFS" in deleg.detail, deleg
    assert "(/sys/fs/cgroup is mounted read-only)" in deleg.detail
    assert "cgroup delegation" in [c.name for c in doctor.blocking(list(rows.values()))]


def _root_of_a_user_namespace() -> None:
    """unshare --user --map-root-user: uid 0 inside is uid 0 outside, and nothing more."""
    uid, gid = os.geteuid(), os.getegid()
    sc.unshare(sc.CLONE_NEWUSER)
    idmap.write_uid_map("self", [idmap.IdMap(0, uid, 1)])
    idmap.deny_setgroups("self")
    idmap.write_gid_map("self", [idmap.IdMap(0, gid, 1)])


def test_root_of_a_user_namespace_is_not_the_hosts():
    rows = _checks_after(_root_of_a_user_namespace)
    root = rows["root"]
    assert root.status == "warn", root
    assert root.detail.startswith("euid 0 in a user namespace, not the host's (user:[")
    assert "uid_map 0 0 1: uid 0 here is uid 0 one level up" in root.detail
    assert "LXD" in root.hint and "/run/netns" in root.blocks
    assert rows["namespace uts"].ok                # its own namespaces: yes


def _nobody() -> None:
    """Become uid 65534 with no capabilities, as a daemon dropping its privileges does: what
    the checks import later is imported first (the interpreter's own directory may be
    closed to nobody, a pyenv under a mode-700 /root)."""
    import gzip  # noqa: F401
    from nsutil import netlink, tc  # noqa: F401
    from recipes import cow  # noqa: F401
    from recipes.container import rootfs  # noqa: F401
    from recipes.common import upperfs  # noqa: F401
    os.setgroups([])
    os.setresgid(65534, 65534, 65534)
    os.setresuid(65534, 65534, 65534)


def test_an_unprivileged_user_gets_root_warned_and_its_own_namespaces():
    """Without root the tasks make a user namespace first: not being root, and not having
    the capabilities outside, are warnings; the user namespace row is what blocks."""
    rows = _checks_after(_nobody)
    assert rows["root"].status == "warn" and rows["root"].detail.startswith("euid 65534")
    assert rows["capabilities"].status == "warn"
    uts = rows["namespace uts"]
    assert uts.ok == rows["unprivileged user namespace"].ok, uts
    assert not uts.ok or uts.detail.endswith("made in a child, inside a user namespace of "
                                             "its own"), uts
    blocking = [c.name for c in doctor.blocking(list(rows.values()))]
    assert "root" not in blocking and "capabilities" not in blocking
    assert rows["unprivileged user namespace"].required


def test_ubuntus_apparmor_restriction_is_named(monkeypatch, tmp_path):
    """Ubuntu 23.10+'s kernel.apparmor_restrict_unprivileged_userns cannot exist on this
    Debian kernel (nor in the VM), so its sysctl file is faked here (open() of that one path
    reads a file of the test's): the only fake in this file. Root is unaffected; the row
    warns and says what it blocks and the fix."""
    import builtins
    fake = tmp_path / "restrict"
    fake.write_text("1\n")
    real_open = builtins.open
    monkeypatch.setattr(builtins, "open", lambda path, *a, **k: real_open(
        fake if path == "/proc/sys/kernel/apparmor_restrict_unprivileged_userns" else path,
        *a, **k))
    rows = {c.name: c for c in doctor.check_userns_limits()}
    row = rows["apparmor_restrict_unprivileged_userns"]
    assert row.status == "warn" and row.detail == "1" and row.layer == "user namespaces"
    assert "sysctl -w kernel.apparmor_restrict_unprivileged_userns=0" in row.hint
    assert row.blocks.startswith("user-demo run without root")


def test_the_seccomp_helper_really_filters():
    """The test filter itself: under it unshare is EPERM, clone3 ENOSYS, fork still works."""
    code = ("import os, ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
            "r = libc.unshare(0x04000000); e1 = ctypes.get_errno()\n"
            "libc.syscall.restype = ctypes.c_long\n"
            "r3 = libc.syscall(435, None, 0); e3 = ctypes.get_errno()\n"
            "pid = os.fork()\nif pid == 0: os._exit(7)\n"
            "print(r, e1, r3, e3, os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))\n")
    done = subprocess.run(SECCOMP_EXEC + [sys.executable, "-c", code], capture_output=True,
                          text=True, timeout=120)
    assert done.stdout.split() == ["-1", "1", "-1", "38", "7"], (done.stdout, done.stderr)
