"""Without root (uid 65534, tests/asuser.py): every namespace demo and the tour, on both
backends, in a user namespace of the user's own; the shell forms that show it; the one line
a refusing kernel gets; ./bootstrap from a user account; and the leak guard's per-test check.

Real kernel throughout, except :func:`test_refusal_lines`, which feeds the refusal messages
the sysctl values (see its docstring). The sysctl refusal for real runs only in the VM
(NSR_VM=1), where changing a sysctl is allowed.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest

from asuser import USER_UID, as_user, home, leftovers, user_env, user_home  # noqa: F401
from conftest import unprivileged_argv
from helpers import INVOKE, ROOT, one_line_error

OWNER = "without root: a user namespace comes first; root inside it is uid 65534"
#: a heading of each namespace section of the tour, and what it must have shown
SHOWN = {
    "UTS namespace (CLONE_NEWUTS)": "[root@NewNamespace]# hostname\nNewNamespace",
    "IPC namespace (CLONE_NEWIPC)": "ipcs -q",
    "PID namespace (CLONE_NEWPID)": "grandchild (PID 3 in the child is 1 here)",
    "mount namespace (CLONE_NEWNS)": "unbindable",
    "Network namespace (CLONE_NEWNET): a new namespace has only lo": "  lo: UP",
    "user namespace (CLONE_NEWUSER)": "eUID = 0; eGID = 0",
    "cgroup namespace (CLONE_NEWCGROUP": "0::/    <- the root",
}


def test_tour_rootless(home: str, backend: str) -> None:
    """The tour as uid 65534: one owner line, every namespace section shown, what a user
    cannot do said in one line each, and nothing left (the home fixture checks)."""
    done = as_user(home, "tour", env={"NSR_BACKEND": backend})
    out = done.stdout
    assert done.returncode == 0, done.stderr[-2000:] + out[-2000:]
    assert out.count(OWNER) == 1, out[:500]
    for heading, seen in SHOWN.items():
        assert heading in out, heading
        assert seen in out.split(heading, 1)[1], (heading, seen)
    assert "clone()" in out and "uts:[" in out                           # api-demo
    assert out.count("left out without root:") == 5, out                 # api mount net pair cgns
    assert "packets go both ways" in out                                 # the veth pair
    assert "frozen since the first process entered" in out or "skipped: " in out   # time
    for line in out.splitlines():        # cgroups and copy-on-write: done, or one line why
        if line.startswith("skipped without root:"):
            assert "hint:" in line
    assert "Traceback" not in done.stderr


def test_shell_forms_rootless(home: str, backend: str) -> None:
    """--explain shows the user namespace first and joins it first (it prints the same on
    both backends: checked once); a --shell lesson opens a shell that is root inside, uid
    65534 outside."""
    if backend == "shell":
        explain = as_user(home, "pid-demo", "--explain", env={"NSR_BACKEND": backend})
        assert explain.returncode == 0, explain.stderr
        assert explain.stdout.count(OWNER) == 1
        assert ("unshare --user --map-root-user --uts --pid --fork --mount --mount-proc"
                in explain.stdout)
        assert "nsenter -t $PID --user --preserve-credentials --pid --mount" in explain.stdout
    lesson = subprocess.run(unprivileged_argv([INVOKE, "uts-demo", "--shell"]), cwd=ROOT,
                            env=user_env(home, NSR_BACKEND=backend), capture_output=True,
                            input="hostname; id -u; cat /proc/self/uid_map\n", text=True,
                            timeout=300)
    assert lesson.returncode == 0, lesson.stderr
    assert "USER+UTS namespaces of pid" in lesson.stdout
    shell_part = lesson.stdout.split("readlink /proc/$$/ns/uts; exit\n", 1)[1]
    assert shell_part.split()[:5] == ["NewNamespace", "0", "0", "65534", "1"], shell_part[:300]


@pytest.mark.userspace
@pytest.mark.parametrize("setting", ["kernel.apparmor_restrict_unprivileged_userns",
                                     "user.max_user_namespaces",
                                     "kernel.unprivileged_userns_clone"])
def test_refusal_lines(setting: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each refusing sysctl gives every task and doctor's row one line naming it and its fix.

    Mocked: whether the kernel refuses (``userns_allowed``) and the sysctl files' values.
    Neither this machine nor the 6.1 VM has kernel.apparmor_restrict_unprivileged_userns
    (Ubuntu's) or kernel.unprivileged_userns_clone (old Debian's), and sysctls change only in
    the VM, so this tests the messages; :func:`test_max_user_namespaces_refusal_in_vm` sees
    the real refusal of user.max_user_namespaces=0."""
    from nsutil import errors, rootless
    from recipes.ops import layercheck
    entry = next(e for e in rootless.SYSCTLS if e[0] == setting)
    real_read = rootless.read_setting
    monkeypatch.setattr(rootless, "userns_allowed", lambda: False)
    monkeypatch.setattr(rootless, "decide", lambda: True)
    monkeypatch.setattr(rootless, "read_setting", lambda p: entry[2] if p == entry[1] else
                        ("1" if "max_user" in p else real_read(p)))
    with pytest.raises(rootless.UsernsRefused) as caught:
        rootless.require_namespaces("uts-demo")
    line = str(caught.value)
    assert "\n" not in line and line.startswith("uts-demo: the kernel refuses user namespaces")
    assert f"({setting}={entry[2]})" in line and f"hint: {entry[3]}" in line
    assert isinstance(caught.value, errors.NsrError)
    row = layercheck.check_unprivileged_userns(None)
    assert not row.ok and row.required and f"{setting}={entry[2]}" in row.detail
    assert row.hint == entry[3]


@pytest.mark.skipif(os.environ.get("NSR_VM") != "1",
                    reason="changes a sysctl: only in the VM (tests/vm/run)")
def test_max_user_namespaces_refusal_in_vm(home: str) -> None:
    """In the VM, user.max_user_namespaces=0 for a moment: a demo (through
    require_namespaces, as every task: test_refusal_lines) and doctor say the setting and its
    fix in one line, and nothing is made (the home's check); then it is restored. Two CLI
    starts: each costs about 12 s in the emulated VM."""
    path = "/proc/sys/user/max_user_namespaces"
    with open(path) as f:
        saved = f.read().strip()
    try:
        with open(path, "w") as f:
            f.write("0")
        line = one_line_error(as_user(home, "uts-demo"))
        assert line == ("nsrecipes: uts-demo: the kernel refuses user namespaces to uid "
                        "65534 (user.max_user_namespaces=0) (hint: sudo sysctl -w "
                        "user.max_user_namespaces=15000, or run as root)"), line
        doctor = as_user(home, "doctor")
        assert doctor.returncode != 0
        assert ("unprivileged user namespace            MISSING  unshare(CLONE_NEWUSER) as "
                "this user, in a child: every task without root: the kernel refuses user "
                "namespaces to uid 65534 (user.max_user_namespaces=0)") in doctor.stdout
    finally:
        with open(path, "w") as f:
            f.write(saved)


def test_bootstrap_as_user(home: str) -> None:
    """./bootstrap from a user account with a system tool missing: one line naming the
    package to install with sudo, no apt-get run, no .venv made."""
    bindir = os.path.join(home, "bin")
    os.mkdir(bindir)
    # bwrap is the one left out: it is in /usr/bin, which bootstrap does not add to PATH as
    # it adds the sbin directories (where ip, tc and runc are)
    for tool in ("id", "dirname", "unshare", "nsenter", "ipcmk", "mount", "ip", "tc", "ps",
                 "hostname", "busybox", "setpriv", "ping", "dot", "apt-get"):
        found = shutil.which(tool)
        if found:
            os.symlink(found, os.path.join(bindir, tool))
    script = os.path.join(home, "bootstrap")
    shutil.copy(os.path.join(ROOT, "bootstrap"), script)
    os.chown(script, USER_UID, USER_UID)
    done = subprocess.run(unprivileged_argv([script]), cwd=home, capture_output=True, text=True,
                          env=user_env(home, PATH=bindir), timeout=60)
    line = one_line_error(done)
    assert line.startswith("bootstrap: as uid 65534, install these first: sudo apt-get install")
    assert line.split("(hint:")[0].rsplit("install", 1)[1].split() == ["bubblewrap"]
    assert not os.path.exists(os.path.join(home, ".venv"))


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def test_leak_guard_rootless() -> None:
    """The per-test guard names what a test started as uid 65534 and left running, and the
    records in its runtime directory -- and not a process with another HOME."""
    with user_home(check=False) as mine, user_home(check=False) as other:
        procs = [subprocess.Popen(unprivileged_argv(["sleep", "60"]), env=user_env(h))
                 for h in (mine, other)]
        try:
            for p in procs:      # setpriv has exec'd sleep (same pid) once its cmdline says so
                deadline = time.monotonic() + 10
                while not _cmdline(p.pid).startswith(b"sleep") and time.monotonic() < deadline:
                    time.sleep(0.01)
            base = os.path.join(mine, "run", "nsrecipes")
            os.mkdir(base)
            open(os.path.join(base, "env-x.json"), "w").close()
            left = leftovers(mine)
            assert any(f"pid {procs[0].pid} sleep 60" in ln for ln in left), left
            assert not any(f"pid {procs[1].pid} " in ln for ln in left), left
            assert f"record: {base}/env-x.json" in left
        finally:
            for p in procs:
                p.kill()
                p.wait()
