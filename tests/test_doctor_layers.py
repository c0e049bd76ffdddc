"""doctor's layers against the real thing: a seccomp filter (tests/seccomp_exec.py), a dropped
capability (setpriv), a container-like sandbox (its own PID namespace and /proc, /proc/sys and
the cgroup tree read-only, as Docker mounts them), a user namespace whose uid 0 is not the
host's, and an unprivileged user. Each verdict is read from `doctor --json` run through the
CLI; the one fake (Ubuntu's AppArmor sysctl, which this kernel cannot have) says so."""
from __future__ import annotations

import json
import os
import subprocess

import pytest

import helpers
from nsutil import cgroupfs
from recipes import doctor

HERE = os.path.dirname(os.path.abspath(__file__))
SECCOMP = ["/usr/bin/python3", os.path.join(HERE, "seccomp_exec.py")]
NO_SYS_ADMIN = ["setpriv", "--bounding-set", "-sys_admin,-net_admin", "--inh-caps",
                "-sys_admin,-net_admin", "--"]


@pytest.fixture(autouse=True)
def _root():
    if os.geteuid() != 0:
        pytest.skip("the probes are compared as root")


def _seccomp(*options: str) -> list[str]:
    done = subprocess.run(["/usr/bin/python3", "-c", "import seccomp"], capture_output=True)
    if done.returncode != 0:
        pytest.skip("needs Debian's python3-seccomp for /usr/bin/python3")
    return SECCOMP + list(options) + ["--"]


def _doctor(prefix: list[str] | None = None, env: dict | None = None) -> tuple[dict, subprocess.CompletedProcess]:
    """`doctor --json` under ``prefix``: its rows by name, and the process."""
    proc = helpers.cli("doctor", "--json", prefix=prefix, env=env)
    rows = json.loads(proc.stdout)
    for row in rows:
        assert set(row) == {"layer", "name", "status", "ok", "required", "detail", "blocks",
                            "fix"}, row
        assert row["status"] == ("ok" if row["ok"] else "MISSING" if row["required"] else "warn")
        if not row["ok"]:
            assert row["blocks"] and row["fix"], row
    return {r["name"]: r for r in rows}, proc


def _blocked(proc: subprocess.CompletedProcess) -> list[str]:
    """The rows the one stderr line names as blocking."""
    line = helpers.one_line_error(proc)
    return line.split("blocked by ", 1)[1].split(" (hint:")[0].split(", ")


def test_this_host_every_layer_lets_through():
    """Root on this host (and in the VM guest): who, capabilities, seccomp, LSM, mounts and
    the document's namespaces all ok, and doctor exits 0 exactly when no required row fails."""
    rows, proc = _doctor()
    for name in ("root", "capabilities", "seccomp", "LSM", "mount in a new namespace",
                 "namespace uts", "namespace pid", "namespace mnt", "namespace net",
                 "unprivileged user namespace", "cgroup delegation"):
        assert rows[name]["ok"], rows[name]
    assert rows["root"]["detail"].startswith("euid 0 in the initial user namespace")
    assert rows["seccomp"]["detail"] == "Seccomp: 0 (no filter)"
    assert "made in a child" in rows["namespace uts"]["detail"]
    blocking = [n for n, r in rows.items() if r["required"] and not r["ok"]]
    assert (proc.returncode == 0) == (not blocking), (blocking, proc.stderr)
    layers = [r["layer"] for r in rows.values()]
    assert layers[:3] == ["who", "who", "capabilities"] and "seccomp" in layers


def test_docker_default_names_seccomp_and_capabilities_and_their_fixes():
    """The filter and no CAP_SYS_ADMIN/CAP_NET_ADMIN: those two rows block, with their own
    fixes, and the namespace rows say which layers refused them."""
    rows, proc = _doctor(_seccomp() + NO_SYS_ADMIN)
    seccomp, caps = rows["seccomp"], rows["capabilities"]
    assert seccomp["status"] == "MISSING", seccomp
    assert seccomp["detail"].startswith("Seccomp: 2 (a filter, ") and "the filter answers " \
        "unshare: EPERM; setns: EPERM; mount: EPERM; umount2: EPERM; clone: EPERM; clone3: " \
        "ENOSYS" in seccomp["detail"], seccomp
    assert "--security-opt seccomp=unconfined" in seccomp["fix"]
    assert caps["status"] == "MISSING" and "cap_sys_admin, cap_net_admin" in caps["detail"]
    assert caps["fix"] == ("start the container with --cap-add SYS_ADMIN --cap-add NET_ADMIN, "
                           "or --privileged"), caps
    uts = rows["namespace uts"]
    assert not uts["ok"] and uts["detail"].endswith("unshare in a child: EPERM: refused by "
                                                    "seccomp and capabilities"), uts
    assert "--privileged" in uts["fix"]
    assert rows["mount in a new namespace"]["status"] == "MISSING"
    assert rows["LSM"]["ok"]                     # not blamed: seccomp and caps refused first
    blocked = _blocked(proc)
    assert blocked[:2] == ["capabilities", "seccomp"] and "namespace uts" in blocked, blocked


def test_a_filter_is_judged_by_what_it_refuses_not_by_its_mode():
    """Seccomp: 2 with a filter that answers clone3 alone (glibc falls back to clone): ok,
    and the namespaces are made."""
    rows, proc = _doctor(_seccomp("--only-clone3"))
    seccomp = rows["seccomp"]
    assert seccomp["ok"] and "only clone3 is answered (clone3: ENOSYS)" in seccomp["detail"]
    assert seccomp["detail"].startswith("Seccomp: 2 ")
    assert rows["namespace pid"]["ok"] and rows["mount in a new namespace"]["ok"]
    only_mount = _doctor(_seccomp("--allow-unshare"))[0]
    assert only_mount["namespace uts"]["ok"]             # unshare itself passes ...
    assert not only_mount["mount in a new namespace"]["ok"]    # ... the mount does not
    assert "refused by seccomp" in only_mount["mount in a new namespace"]["detail"]


def _container_sandbox() -> list[str]:
    """A prefix that runs the CLI as a container does: its own PID namespace and /proc, and
    /proc/sys and the cgroup tree nsrecipes uses bound read-only, in a mount namespace of its
    own (the host's mounts are untouched)."""
    layout = cgroupfs.detect()
    tree = layout.v2 if layout.mode == "unified" else layout.v1.get("memory")
    script = ("set -e; for d in /proc/sys \"$CG\"; do mount --bind \"$d\" \"$d\"; "
              "mount -o remount,bind,ro \"$d\"; done; exec \"$@\"")
    return ["env", f"CG={tree}", "unshare", "--mount", "--propagation", "private", "--pid",
            "--fork", "--mount-proc", "--", "sh", "-c", script, "sh"]


def test_a_container_is_seen_and_its_read_only_trees_named():
    rows, proc = _doctor(_container_sandbox())
    own = rows["own PID namespace"]
    assert own["ok"] and own["detail"].startswith("yes (pid:[") and "a container" in own["detail"]
    procsys = rows["/proc/sys"]
    assert procsys["status"] == "warn" and procsys["detail"].startswith("read-only; ")
    assert "EROFS" in procsys["detail"] and "--privileged" in procsys["fix"], procsys
    deleg = rows["cgroup delegation"]
    assert deleg["status"] == "MISSING" and "EROFS" in deleg["detail"], deleg
    assert "(/sys/fs/cgroup is mounted read-only)" in deleg["detail"]
    assert "cgroup delegation" in _blocked(proc)
    host = _doctor()[0]
    assert host["own PID namespace"]["detail"].startswith("no: the host's initial one")
    assert host["/proc/sys"]["ok"]


def test_root_of_a_user_namespace_is_not_the_hosts():
    rows, _ = _doctor(["unshare", "--user", "--map-root-user", "--"])
    root = rows["root"]
    assert root["status"] == "warn", root
    assert root["detail"].startswith("euid 0 in a user namespace, not the host's (user:[")
    assert "uid_map 0 0 1: uid 0 here is uid 0 one level up" in root["detail"]
    assert "LXD" in root["fix"] and "/run/netns" in root["blocks"]
    assert rows["namespace uts"]["ok"]                # its own namespaces: yes


def test_an_unprivileged_user_gets_root_missing_and_its_own_namespaces():
    proc = helpers.as_nobody("doctor", "--json")
    rows = {r["name"]: r for r in json.loads(proc.stdout)}
    assert rows["root"]["status"] == "MISSING" and rows["root"]["detail"].startswith("euid 65534")
    assert rows["capabilities"]["status"] == "MISSING"
    assert rows["namespace uts"]["ok"] == rows["unprivileged user namespace"]["ok"]
    assert "root" in _blocked(proc)


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
