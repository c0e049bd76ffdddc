"""doctor's host lines against the real host (and the VM guest): mount propagation, where an
overlay upper can live, the kernel modules, AppArmor. No mocks: each verdict is compared
with what the kernel really does, in mount namespaces the tests make."""
from __future__ import annotations

import os
import tempfile

import pytest

import helpers
from nsutil import process
from nsutil import syscalls as sc
from nsutil.errors import SyscallError
from nsutil.state import state_dir
from overlaytmp import run_in_overlay_tmp
from recipes import cow
from recipes.ops import doctor

#: doctor makes a dozen attempts in children and starts a dozen tools: in the emulated VM,
#: shared with other runs, one `invoke doctor` has taken 60 to 170 s
DOCTOR_TIMEOUT = 600


@pytest.fixture(autouse=True)
def _root():
    if os.geteuid() != 0:
        pytest.skip("mount namespaces need root")


def _by_name(checks: list[doctor.Check]) -> dict[str, doctor.Check]:
    return {c.name: c for c in checks}


def test_propagation_follows_the_namespace():
    """Shared, slave and private as the test sets them in mount namespaces of its own."""
    def inside() -> list[str]:
        seen = []
        sc.unshare(sc.CLONE_NEWNS)
        sc.make_propagation("/", "shared", recursive=True)
        seen.append(doctor.check_propagation().detail)
        keep = os.open("/proc/self/ns/mnt", os.O_RDONLY)   # keeps that namespace alive
        sc.unshare(sc.CLONE_NEWNS)            # a copy: still a peer of the one above ...
        sc.make_propagation("/", "slave", recursive=True)    # ... until made its slave
        seen.append(doctor.check_propagation().detail)
        os.close(keep)
        sc.make_propagation("/", "private", recursive=True)
        seen.append(doctor.check_propagation().detail)
        return seen

    shared, slave, private = process.fork_call(inside, "propagation test")
    assert shared.startswith("shared (peer group "), shared
    group = shared.split("peer group ")[1].rstrip(")")
    assert slave == f"slave (of peer group {group})", slave
    assert private == "private"
    with open("/proc/self/mountinfo") as f:           # and the host's own, unchanged
        root = [ln.split(" - ")[0].split()[6:] for ln in f if ln.split()[4] == "/"][-1]
    host = doctor.check_propagation()
    assert host.hint and host.detail.startswith("shared") == any(
        x.startswith("shared:") for x in root), (host.detail, root)


def _kernel_takes_an_upper_in(directory: str) -> bool:
    """Really mount an overlay with upper and work in ``directory`` (in a mount namespace of
    our own, so the host never sees it): the kernel's own verdict."""
    def inside() -> bool:
        sc.unshare(sc.CLONE_NEWNS)
        sc.make_propagation("/", "private", recursive=True)
        d = tempfile.mkdtemp(prefix="nsrtest-ovl-", dir=directory)
        try:
            for sub in ("l", "u", "w", "m"):
                os.mkdir(os.path.join(d, sub))
            sc.mount("overlay", f"{d}/m", "overlay", 0, f"lowerdir={d}/l,upperdir={d}/u,workdir={d}/w")
            sc.umount(f"{d}/m")
            return True
        except SyscallError:
            return False
        finally:
            cow.remove_tree(d)
    return process.fork_call(inside, "overlay probe")


def _existing(path: str) -> str:
    while not os.path.isdir(path):
        path = os.path.dirname(path)
    return path


def test_upper_verdicts_are_the_kernels():
    """On this host (and in the VM guest, /tmp on overlayfs) the state and scratch lines say
    ok exactly where the kernel takes an upper; where not, the hint names the way out."""
    checks = _by_name(doctor.check_overlay_dirs())
    for what, path in (("state dir", state_dir(create=False)), ("scratch dir", cow.scratch_dir())):
        line = checks[f"overlay upper in {what}"]
        assert line.ok == _kernel_takes_an_upper_in(_existing(path)), line
        assert path in line.detail and line.hint
        if not line.ok:
            assert "tmpfs" in line.detail and ("ext4" in line.hint), line
    cache = checks["overlay lower in cache dir"]
    assert cache.ok and cache.hint


def test_overlay_tmp_is_reported_with_its_fix(tmp_path):
    """A container-like host: /tmp, the state and the cache dirs on overlayfs."""
    def inside(tmp: str) -> tuple[dict, bool]:
        return _by_name(doctor.check_overlay_dirs()), _kernel_takes_an_upper_in(tmp)

    (checks, kernel_ok), left = run_in_overlay_tmp(str(tmp_path), inside)
    assert left["fstype"] == "overlay" and not kernel_ok
    for what in ("state dir", "scratch dir"):
        line = checks[f"overlay upper in {what}"]
        assert not line.ok and "overlay at" in line.detail and "uppers go on a tmpfs" in line.detail
        assert "TMPDIR" in line.hint or "NSR_STATE_DIR" in line.hint
    assert checks["overlay lower in cache dir"].ok       # a lower on overlayfs is fine
    assert left["mounts"] == [] and left["entries"] == []


def _loaded_modules() -> str:
    """The loaded modules (none can be where the kernel has no module support)."""
    if not os.path.exists("/proc/modules"):
        return ""
    with open("/proc/modules") as f:
        return "".join(sorted(ln.split()[0] + "\n" for ln in f))


def test_modules_agree_with_sysfs_and_the_config_and_load_nothing():
    before = _loaded_modules()
    checks = _by_name(doctor.check_modules())
    assert _loaded_modules() == before                   # modprobe -n only: nothing loaded
    for name, symbol, _users in doctor.MODULES:
        line = checks["netem" if name == "sch_netem" else f"module {name}"]
        assert line.hint
        config = doctor.kernel_config(symbol)
        if os.path.exists(f"/sys/module/{name}/initstate"):
            assert line.ok and line.detail.startswith("loaded"), line
        elif os.path.isdir(f"/sys/module/{name}") or config == "y":
            assert line.ok and line.detail.startswith("built in"), line
        elif config == "n":
            assert not line.ok and f"{symbol} is not set" in line.detail, line
        else:   # a module: loadable exactly where /lib/modules has it
            moddir = f"/lib/modules/{os.uname().release}"
            with open(f"{moddir}/modules.dep") as f:
                listed = f"/{name}.ko" in f.read()
            assert line.ok == listed and ("loadable" in line.detail) == listed, line


def test_cli_prints_the_host_lines_with_hints():
    proc = helpers.cli("doctor", timeout=DOCTOR_TIMEOUT)
    lines = proc.stdout.splitlines()
    for name in ("root mount propagation", "overlay upper in state dir",
                 "overlay upper in scratch dir", "overlay lower in cache dir", "module veth",
                 "module bridge", "module overlay", "netem",
                 "apparmor_restrict_unprivileged_userns", "root", "capabilities", "seccomp",
                 "LSM", "own PID namespace", "/proc/sys", "mount in a new namespace",
                 "unprivileged user namespace", "cgroup delegation",
                 "overlay in a user namespace"):
        assert any(ln.startswith(name + " ") for ln in lines), (name, proc.stdout)
    for i, ln in enumerate(lines[1:], 1):
        if ln.split() and ln.split()[0] not in ("blocks:", "fix:") and any(
                s in ln.split()[1:4] for s in ("warn", "MISSING")):
            assert lines[i + 1].strip().startswith("blocks: "), ln
            assert lines[i + 2].strip().startswith("fix: "), ln


def _path_without(tool: str, directory: str) -> str:
    """``directory`` filled with a symlink to every program on $PATH but ``tool``."""
    os.makedirs(directory)
    for where in os.environ.get("PATH", "").split(":"):
        for name in sorted(os.listdir(where)) if os.path.isdir(where) else []:
            link = os.path.join(directory, name)
            if name != tool and not os.path.lexists(link):
                os.symlink(os.path.join(where, name), link)
    return directory


def _row(stdout: str, name: str) -> list[str]:
    """The status and detail words of the table row ``name``."""
    rows = [ln[len(name):].split() for ln in stdout.splitlines() if ln.startswith(name + " ")]
    assert len(rows) == 1, (name, stdout)
    return rows[0]


def test_a_tool_missing_from_path_is_reported_missing_and_fails(tmp_path):
    """The same PATH of symlinks, once with nsenter and once without: only the row and the
    verdict for nsenter change."""
    whole = helpers.cli("doctor", timeout=DOCTOR_TIMEOUT,
                        env={"PATH": _path_without("", str(tmp_path / "all"))})
    assert _row(whole.stdout, "tool nsenter")[0] == "ok", whole.stdout
    assert "tool nsenter" not in whole.stderr
    without = helpers.cli("doctor", timeout=DOCTOR_TIMEOUT,
                          env={"PATH": _path_without("nsenter", str(tmp_path / "no"))})
    assert _row(without.stdout, "tool nsenter") == ["MISSING", "missing"], without.stdout
    assert "fix: apt-get install util-linux" in without.stdout
    assert without.returncode == 1
    missing = without.stderr.split("blocked by ", 1)[1].split(" (hint:")[0].split(", ")
    assert "tool nsenter" in missing, without.stderr
