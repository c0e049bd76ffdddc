"""Labs across machines (issue 12): Fabric to simulated machines, VXLAN between them.

The machines are nsrecipes environments running a real sshd each (:mod:`tests.machines`);
the controller runs in a namespace of its own, so no packet crosses the host's.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest

from machines import cluster
from nsutil.errors import InvalidInput, NsrError
from recipes.labs.machines import controller as across
from recipes.labs.machines import sessions
from recipes.labs import build as topo
from recipes.labs import labfile as topofile

LINE3 = """[hosts.h1]
[hosts.h2]
router = true
machine = "m2"
[hosts.h3]
machine = "m2"
[[links]]
a = "h1"
b = "h2"
[[links]]
a = "h2"
b = "h3"
"""


def _lab(tmp_path, c, body: str = LINE3, venv=None) -> str:
    path = tmp_path / "lab.toml"
    path.write_text(c.toml(venv) + body)
    return str(path)


def _nothing_left(c) -> None:
    for name in c.names:
        assert c.netns(name) == [], name
        assert c.state(name) == [], name


# --- bad input: one line, file:line, before anything is made ---------------------------------

BASE = """[machines.m1]
ssh = "root@10.250.0.11"
underlay = "10.250.0.11"
[machines.m2]
ssh = "root@10.250.0.12"
underlay = "10.250.0.12"
"""
LINK = '[[links]]\na = "h1"\nb = "h2"\n'
H12 = '[hosts.h1]\n[hosts.h2]\nmachine = "m2"\n'


@pytest.mark.parametrize("text, line, words", [
    (BASE + '[hosts.h1]\nmachine = "m9"\n[hosts.h2]\n' + LINK, 8, "names machine 'm9'"),
    (BASE.replace("root@10.250.0.12", "root@@x") + H12 + LINK, 5, "does not parse"),
    (BASE.replace("root@10.250.0.12", "root@10.250.0.12:99999") + H12 + LINK, 5, "does not parse"),
    (BASE.replace('underlay = "10.250.0.12"', 'underlay = "10.250.0.11"') + H12 + LINK, 6, "same underlay"),
    (BASE.replace("root@10.250.0.12", "root@10.250.0.11") + H12 + LINK, 5, "port collision"),
    (BASE + 'vxlan_port = 4790\n' + H12 + LINK, 11, "port collision"),
    (BASE + H12 + LINK + "vni = 0\n", 13, "not in 1..16777215"),
    (BASE + H12.replace("h1]", "h1]\nrouter = true") + '[hosts.h3]\nmachine = "m2"\n' + LINK
     + "vni = 7\n" + '[[links]]\na = "h1"\nb = "h3"\nvni = 7\n', 20, "same vni 7"),
    ('[hosts.h1]\nmachine = "m1"\n[hosts.h2]\n' + LINK, 2, "no [machines] table"),
    (BASE + "colour = 1\n" + H12 + LINK, 7, "unknown machine key"),
])
@pytest.mark.userspace
def test_bad_input_is_one_line_with_the_line(tmp_path, text, line, words):
    path = tmp_path / "lab.toml"
    path.write_text(text)
    with pytest.raises(InvalidInput) as err:
        topofile.plan_file(str(path), "t1")
    assert f"lab.toml:{line}:" in str(err.value) and words in str(err.value)
    assert "\n" not in str(err.value) and err.value.hint


@pytest.mark.userspace
def test_split_gives_each_machine_its_part(tmp_path):
    path = tmp_path / "lab.toml"
    path.write_text(BASE + LINE3)
    plan = topofile.plan_file(str(path), "t1")
    assert plan.placement == {"h1": "m1", "h2": "m2", "h3": "m2"}
    assert [ln.vxlan for ln in plan.links] == [{"vni": 1000, "port": 4789}, None]
    parts = across.parts(plan)
    assert list(parts["m1"]["plan"]["hosts"]) == ["h1"] and parts["m1"]["plan"]["links"] == []
    (end,) = parts["m1"]["ends"]
    assert (end["local"], end["remote"], end["ns"], end["dev"]) == (
        "10.250.0.11", "10.250.0.12", "nsr-t1-h1", "nsr-t1-h2")
    assert parts["m2"]["routes"]["h3"] == plan.routes["h3"]
    assert parts["m1"]["names"] == {f"h{i}": f"nsr-t1-h{i}" for i in (1, 2, 3)}  # hosts file


# --- real machines ---------------------------------------------------------------------------

def _task(task, *args, **kw) -> None:
    """A task run in this process as invoke runs it (no Python start: the VM is slow)."""
    from invoke import Context
    task(Context(), *args, **kw)


def test_cli_build_check_show_down(tmp_path, capsys):
    """The CLI, shell backend: net-topo --file --check (a real invoke), --show, --down."""
    from cli.labs import net_topo
    with cluster(2, tmp_path) as c:
        path = _lab(tmp_path, c)
        try:
            up = c.invoke("net-topo", "--file", path, "--scope", "mx1", "--check", "--backend", "shell")
            assert up.returncode == 0, up.stderr
            assert "built 3 hosts on 2 machines" in up.stdout and "check: 3/3 pairs" in up.stdout
            link = c.exec("m1", ["ip", "-n", "nsr-mx1-h1", "-d", "link", "show", "nsr-mx1-h2"]).stdout
            assert "vxlan id 1000 remote 10.250.0.12 local 10.250.0.11" in link
            assert "mtu 1450" in link and "dstport 4789" in link
            # h1's hosts file names the hosts it reaches on the other machine
            named = c.exec("m1", ["ip", "netns", "exec", "nsr-mx1-h1", "getent", "hosts", "h3"])
            assert named.stdout.split()[1:] == ["h3", "nsr-mx1-h3"]
            capsys.readouterr()
            with c.controller():
                _task(net_topo, show=True, scope="mx1")
                show = capsys.readouterr().out
                assert "machine m2: root@10.250.0.12" in show and "MISSING" not in show
                assert "h1-h2 vni 1000" in show
        finally:
            with c.controller():
                _task(net_topo, down=True, scope="mx1")
        _nothing_left(c)


THREE = """[hosts.r1]
router = true
machine = "m2"
[hosts.a]
[hosts.b]
router = true
machine = "m3"
[hosts.c]
machine = "m3"
[[links]]
a = "a"
b = "r1"
rate = "20mbit"
[[links]]
a = "r1"
b = "b"
vni = 77
[[links]]
a = "b"
b = "c"
"""


def test_three_machines_router_and_rate(tmp_path):
    """The Python API, native backend (the CLI test above builds with the shell one):
    parts on three machines, a router with two tunnels, a rate on a tunnel, a given VNI,
    full-size packets through the 1450-byte MTU, the controller's record while it lives."""
    with cluster(3, tmp_path) as c:
        path = _lab(tmp_path, c, THREE)
        with c.controller(), topo.topology(file=path, backend="native") as net:
            assert c.netns("m2") == [net.plan.hosts["r1"]] and c.netns("m1") == [net.plan.hosts["a"]]
            result = net.check()
            assert result["failed"] == [] and result["pairs"] == 6
            assert result["hops"][("a", "c")] == 3
            ns_a, dev = net.plan.hosts["a"], net.plan.hosts["r1"]
            qdisc = c.exec("m1", ["tc", "-n", ns_a, "qdisc", "show", "dev", dev]).stdout
            assert "tbf" in qdisc and "20Mbit" in qdisc
            link = c.exec("m1", ["ip", "-n", ns_a, "-d", "link", "show", dev]).stdout
            assert "vxlan id 1000 remote 10.250.0.12 local 10.250.0.11" in link
            assert "mtu 1450" in link and "dstport 4789" in link
            vx = c.exec("m3", ["ip", "-n", net.plan.hosts["b"], "-d", "link", "show", dev]).stdout
            assert "vxlan id 77 remote 10.250.0.12" in vx
            big = c.exec("m1", ["ip", "netns", "exec", ns_a, "ping", "-c1", "-W5", "-M", "do",
                                "-s", "1422", str(net.plan.addrs()["c"][0]).split("/")[0]])
            assert big.returncode == 0                   # 1450-byte packets fit the tunnels
            assert across.recorded(net.plan.scope)
        assert not across.recorded(net.plan.scope)
        _nothing_left(c)


def test_machine_with_sshd_stopped_undoes_the_others(tmp_path):
    with cluster(3, tmp_path) as c:
        path = _lab(tmp_path, c, THREE)
        c.kill_sshd("m3")
        with pytest.raises(NsrError) as err, c.controller():
            with topo.topology(file=path):
                pass
        msg = str(err.value)
        assert msg.startswith("machine m3 (root@10.250.0.13): ssh:") and "\n" not in msg
        assert "connection refused" in msg.lower()
        _nothing_left(c)
        assert not across.recorded()
        # m3 up again, but its part fails half-way (one of its names is taken there):
        # m1 and m2 have built theirs, get no commit, and undo them
        c.start_sshd("m3")
        c.exec("m3", ["ip", "netns", "add", "nsr-mf1-c"])
        try:
            with pytest.raises(NsrError) as err, c.controller():
                with topo.topology(file=path, scope="mf1"):
                    pass
            assert str(err.value).startswith("machine m3 (root@10.250.0.13): ")
        finally:
            c.exec("m3", ["ip", "netns", "del", "nsr-mf1-c"])
        _nothing_left(c)
        assert not across.recorded()


def test_other_nsrecipes_version_is_refused(tmp_path):
    """m2's venv is made with ``python -m venv --system-site-packages`` and holds a real
    ``nsrecipes-0.0.1.dist-info`` (METADATA with its name and version) in its site-packages,
    plus a .pth to this checkout: importlib.metadata there sees an installed distribution
    nsrecipes 0.0.1, while the code is this one."""
    venv = tmp_path / "nsr-old-venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip",
                    str(venv)], check=True, timeout=600)
    site = next((venv / "lib").glob("python3*/site-packages"))
    dist = site / "nsrecipes-0.0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: nsrecipes\nVersion: 0.0.1\n")
    main_site = next(p for p in sys.path if p.endswith("site-packages") and sys.prefix in p)
    (site / "nsr-main.pth").write_text(os.path.dirname(os.path.dirname(__file__)) + "\n"
                                       + main_site + "\n")
    with cluster(1, tmp_path) as c:
        path = _lab(tmp_path, c, '[hosts.h1]\n[hosts.h2]\n' + LINK, venv={"m1": str(venv)})
        with pytest.raises(NsrError) as err, c.controller():
            with topo.topology(file=path):
                pass
        msg = str(err.value)
        assert msg.startswith("machine m1 (root@10.250.0.11): nsrecipes 0.0.1 is installed there")
        assert "machines-install" in msg and "\n" not in msg
        _nothing_left(c)


def _kept_record(scope: str) -> list:
    """What the controller's ``cleanup`` keeps of lab ``scope``'s record, and why (what it
    does not keep it removes, as every record under net/). The other verdicts are left
    out: they would look at other tests' namespaces on this shared host, coming and going."""
    from recipes.ops import cleanup
    others = [n for n in dir(cleanup) if n.endswith("_in_use") and n.startswith("_")
              and n != "_machine_labs_in_use"]
    with pytest.MonkeyPatch.context() as mp:      # only the verdict on labs across machines
        for name in others:
            mp.setattr(cleanup, name, lambda *a: [])
        kept = cleanup.in_use([])
    return [k for k in kept if k.kind == "machine-lab" and k.name == scope]


def _controller(c, path: str, scope: str, **kw) -> subprocess.Popen:
    """``invoke net-topo --file PATH`` (shell backend) in the controller's namespace; its pid
    is invoke's (ip netns exec execs it)."""
    return subprocess.Popen(["ip", "netns", "exec", c.ctl, os.path.join(os.path.dirname(
        sys.executable), "invoke"), "net-topo", "--file", path, "--scope", scope, "--backend",
        "shell"], cwd=os.path.dirname(os.path.dirname(__file__)), **kw)


def _kill_builders(c, name: str) -> None:
    """SIGKILL machine ``name``'s builders, each with its `ip` (sshd made it a group leader;
    dash's kill takes no `--`), and wait until they are gone."""
    for pid in c.pids(name, "recipes.ops.agent build"):
        c.exec(name, ["sh", "-c", f"kill -9 -{pid}; for i in $(seq 300); do "
                      f"pgrep -g {pid} >/dev/null || exit 0; sleep 0.1; done; exit 1"])


def _waits_for_commit(c, name: str, scope: str) -> bool:
    """Machine ``name``'s builder has said "built": its record is there and it is blocked
    reading stdin (/proc/PID/syscall: read(0, ...)) for the controller's answer."""
    if f"/run/nsrecipes/net/topo-{scope}.json" not in c.state(name):
        return False
    for pid in c.pids(name, "^[^ ]*python[^ ]* -m recipes.ops.agent build"):
        call = c.exec(name, ["cat", f"/proc/{pid}/syscall"], check=False).stdout.split()
        if call[:2] == ["0", "0x0"]:
            return True
    return False


def _until(what, timeout: float = 600) -> None:
    """Poll ``what()`` until it is true (under TCG a Python start takes 12 s)."""
    deadline = time.monotonic() + timeout
    while not what():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_sigkill_of_the_controller_then_cleanup(tmp_path):
    """The controller and the machines' builders killed half-way: each machine's ``cleanup``
    removes its half-built part; the controller's keeps the lab's record while a machine
    cannot be asked, and removes it once every machine says nothing of it is left."""
    hosts = "".join(f'[hosts.x{i}]\nmachine = "m{1 + (i % 4 > 0)}"\nrouter = true\n'
                    for i in range(80))      # 20 on m1, 60 on m2
    links = "".join(f'[[links]]\na = "x{i}"\nb = "x{i + 1}"\n' for i in range(79))
    with cluster(2, tmp_path) as c:
        # m2 held at its gate never says "built", so nothing is ever committed
        gate = tmp_path / "gate"
        gate.touch()
        path = _lab(tmp_path, c, hosts + links, venv={"m2": _gated_venv(tmp_path, gate)})
        proc = _controller(c, path, "mk1", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            _until(lambda: "/run/nsrecipes/net/topo-mk1.json" in c.state("m2")
                   or proc.poll() is not None)
            _until(lambda: c.netns("m1") or proc.poll() is not None)
            assert proc.poll() is None, "the build ended before it could be killed"
            # a crash of everything: the controller stopped first, or it would undo its
            # record on seeing a builder die; then the builders, before they see their
            # sessions close (they would undo their parts); then the controller
            os.kill(proc.pid, signal.SIGSTOP)
            for name in c.names:
                _kill_builders(c, name)
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            if gate.exists():
                gate.unlink()
            if proc.poll() is None:
                proc.kill()
            proc.wait(60)
        assert c.netns("m1"), "a part to clean up"
        assert "/run/nsrecipes/net/topo-mk1.json" in c.state("m2"), "m2 stopped half-way"
        record = c.exec("m1", ["cat", "/run/nsrecipes/net/topo-mk1.json"]).stdout
        assert '"committed"' not in record, "killed too late: the build was committed"
        c.kill_sshd("m2")
        with c.controller():
            kept = _kept_record("mk1")
        assert len(kept) == 1 and kept[0].claims == {("state", across.record_path("mk1"))}
        assert kept[0].why.startswith("cannot ask machine m2 (root@10.250.0.12): ssh:")
        for name in c.names:
            done = c.exec(name, [sys.executable, "-m", "recipes.ops.agent", "cleanup"], check=False)
            assert done.returncode == 0, done.stdout + done.stderr
        _nothing_left(c)
        c.start_sshd("m2")
        with c.controller():
            assert _kept_record("mk1") == []
        from recipes import net
        net.drop_record(across.record_path("mk1"))    # what cleanup then does with it


def _gated_venv(tmp_path, gate) -> str:
    """A venv for m2 whose ``bin/python`` runs this checkout's with a PATH where ``ip`` waits
    while the file ``gate`` is there: its builder starts, writes its record and keeps saying
    "alive", but builds nothing (so cannot say "built") until the gate is removed. A gate,
    not a SIGSTOP once the record is there: a loaded machine's stop can come after "built"."""
    bin_dir = tmp_path / "gated" / "bin"
    bin_dir.mkdir(parents=True)
    gated = {"ip": f'while [ -e {gate} ]; do sleep 0.01; done\nexec {shutil.which("ip")} "$@"\n',
             "python": f'PATH={bin_dir}:$PATH exec {sys.executable} "$@"\n'}
    for name, body in gated.items():
        (bin_dir / name).write_text("#!/bin/sh\n" + body)
        (bin_dir / name).chmod(0o755)
    return str(bin_dir.parent)


def _at_commit(c, tmp_path, scope: str, act) -> tuple[int, str]:
    """Build a lab through the CLI; when both builders wait for "commit" (m2 held back at a
    gate until m1 does, the controller stopped meanwhile, so it reads both "built" first), do
    ``act()`` to m2, then let the controller go on. Its exit status and its one stderr line."""
    gate = tmp_path / "gate"
    gate.touch()
    path = _lab(tmp_path, c, venv={"m2": _gated_venv(tmp_path, gate)})
    proc = _controller(c, path, scope, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _until(lambda: _waits_for_commit(c, "m1", scope))
        assert f"/run/nsrecipes/net/topo-{scope}.json" in c.state("m2"), "m2 began"
        os.kill(proc.pid, signal.SIGSTOP)
        gate.unlink()
        _until(lambda: _waits_for_commit(c, "m2", scope))
        act()
        os.kill(proc.pid, signal.SIGCONT)
        out, err = proc.communicate(timeout=600)
    finally:
        if gate.exists():
            gate.unlink()
        if proc.poll() is None:
            proc.kill()
        proc.wait(60)
    lines = err.strip().splitlines()
    assert len(lines) == 1, out + err
    return proc.returncode, lines[0]


def test_a_machine_lost_at_commit_takes_the_committed_parts_down(tmp_path):
    """m2's builder dies after saying "built", before "commit": m1 commits, m2 cannot. A
    closed session cannot undo m1's committed part, so the controller takes every machine's
    part down itself: one line naming m2, no record, nothing left on either machine."""
    with cluster(2, tmp_path) as c:
        code, line = _at_commit(c, tmp_path, "mc1", lambda: _kill_builders(c, "m2"))
        assert code == 1
        assert line.startswith("nsrecipes: machine m2 (root@10.250.0.12): its nsrecipes ended "
                               "half-way") and "committed parts were taken down" in line, line
        with c.controller():
            assert across.recorded("mc1") == []
        _nothing_left(c)


def test_a_machine_that_cannot_record_its_commit_undoes_its_part(tmp_path):
    """m2 cannot write the record that marks its part committed (here its /run has no inode
    left, as a full state directory would): m2 undoes its part and says why, m1's committed
    part is taken down by the controller; one line naming m2, nothing left anywhere."""
    def fill_run() -> None:
        used = c.exec("m2", ["df", "--output=iused", "/run"]).stdout.split()[-1]
        c.exec("m2", ["mount", "-o", f"remount,nr_inodes={used}", "/run"])
    with cluster(2, tmp_path) as c:
        code, line = _at_commit(c, tmp_path, "mc2", fill_run)
        assert code == 1
        assert line.startswith("nsrecipes: machine m2 (root@10.250.0.12): write("), line
        assert "ENOSPC (hint: its filesystem is full" in line, line
        assert "committed parts were taken down" in line, line
        with c.controller():
            assert across.recorded("mc2") == []
        _nothing_left(c)


def test_a_machine_cut_off_mid_build_is_given_up_then_undoes_its_part(tmp_path, monkeypatch):
    """m2's port on the underlay bridge goes down while m2 builds (a network partition): its
    SSH session stays open and silent. With a heartbeat every 0.5 s, after 15 s of silence
    the controller gives m2 up: one line naming it, m1's part undone, no record. Once the
    port is up again, the end of the session reaches m2, which undoes its own part."""
    monkeypatch.setattr(across, "HEARTBEAT", 0.5)
    monkeypatch.setattr(across, "SILENT_AFTER", 15.0)   # a busy TCG guest must not look lost
    port = _underlay_port("m2")
    errors: list[NsrError] = []
    with cluster(2, tmp_path) as c:
        gate = tmp_path / "gate"
        gate.touch()
        path = _lab(tmp_path, c, venv={"m2": _gated_venv(tmp_path, gate)})

        def build() -> None:
            with c.controller():
                try:
                    # the shell backend: m2's build runs `ip`, which the gate holds
                    with topo.topology(file=path, scope="mp1", backend="shell"):
                        pass
                except NsrError as exc:
                    errors.append(exc)
        controller = threading.Thread(target=build)
        controller.start()
        try:
            _until(lambda: "/run/nsrecipes/net/topo-mp1.json" in c.state("m2")
                   or not controller.is_alive())
            assert controller.is_alive(), f"the build ended before m2 recorded it: {errors}"
            subprocess.run(["ip", "-n", c.ul, "link", "set", port, "down"], check=True)
            gate.unlink()
            controller.join(600)
        finally:
            subprocess.run(["ip", "-n", c.ul, "link", "set", port, "up"], check=True)
            if gate.exists():
                gate.unlink()
        assert not controller.is_alive()
        (err,) = errors
        assert str(err).startswith("machine m2 (root@10.250.0.12): no word from it for 15 s: "
                                   "cut off from the network") and "\n" not in str(err), err
        assert "invoke cleanup" in err.hint
        assert c.netns("m1") == [] and c.state("m1") == []
        with c.controller():
            assert across.recorded("mp1") == []
        _until(lambda: c.netns("m2") == [] and c.state("m2") == [], timeout=300)


def _underlay_port(name: str) -> str:
    """Machine ``name``'s port on the underlay bridge (tests/machines.py: nsr-p0 is the
    controller's, nsr-pN machine mN's)."""
    return f"nsr-p{int(name[1:])}"


def test_env_create_exec_ls_rm_on_a_machine(tmp_path, capsys):
    """env-* --machine: the environment, its record and its removal are machine m2's own
    (env-exec through a real invoke: its ``--`` is read from the command line)."""
    from cli.envs import env_create, env_ls, env_rm
    with cluster(2, tmp_path) as c:
        path = _lab(tmp_path, c)
        with c.controller():
            _task(env_create, "nsr-mxenv", hostname="inm2", machine="m2", file=path)
            assert "ready on machine m2" in capsys.readouterr().out
        try:
            assert os.path.basename(c.state("m2")[0]) == "nsr-mxenv" and c.state("m1") == []
            ran = c.invoke("env-exec", "nsr-mxenv", "--machine", "m2", "--file", path, "--", "hostname")
            assert ran.returncode == 0, ran.stderr
            assert ran.stdout.strip() == "inm2"
            with c.controller():
                _task(env_ls, machine="m2", file=path)
                assert "nsr-mxenv" in capsys.readouterr().out
        finally:
            with c.controller():
                _task(env_rm, "nsr-mxenv", machine="m2", file=path)
        assert "removed environment nsr-mxenv on machine m2" in capsys.readouterr().out
        _nothing_left(c)


@pytest.fixture(scope="session")
def wheelhouse(tmp_path_factory):
    """The dependencies' wheels, from PyPI once per session (skipped where it is not reachable)."""
    d = tmp_path_factory.mktemp("nsr-wheelhouse")
    got = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--only-binary", ":all:",
                          "-d", str(d), "invoke", "pyroute2", "graphviz", "zstandard"],
                         capture_output=True, text=True, timeout=600)
    if got.returncode:
        pytest.skip(f"no wheelhouse: PyPI not reachable ({got.stderr.strip()[-200:]})")
    return str(d)


def test_machines_install_then_version_check(tmp_path, wheelhouse, capsys):
    """machines-install puts this checkout's wheel into a new venv on the machine, with the
    dependencies from a wheelhouse (no index), and the version check then passes there."""
    from cli.machines import machines_install
    venv = tmp_path / "nsr-venv"
    with cluster(1, tmp_path) as c:
        path = _lab(tmp_path, c, '[hosts.h1]\n', venv={"m1": str(venv)})
        with c.controller():
            _task(machines_install, file=path, wheelhouse=wheelhouse)
        out = capsys.readouterr().out
        assert f"with 4 wheels of {wheelhouse}" in out
        assert f"m1 (root@10.250.0.11): nsrecipes {sessions.local_version()} in {venv}" in out
        site = next((venv / "lib").glob("python3*/site-packages"))
        assert (site / "recipes" / "ops" / "agent.py").is_file()     # a copy, not this checkout
        assert (site / "recipes" / "labs" / "machines" / "wire.py").is_file()  # subpackages too
        assert not (tmp_path / "build").exists()


@pytest.mark.userspace
def test_machines_install_refuses_the_default_venv(tmp_path):
    path = tmp_path / "lab.toml"
    path.write_text(BASE + H12 + LINK)
    from recipes.labs.machines import install as machineinstall
    with pytest.raises(InvalidInput) as err:
        machineinstall.install(topofile.plan_file(str(path)).machines)
    assert "machine m1 has no venv of its own" in str(err.value) and "\n" not in str(err.value)
