"""Labs across machines (issue 12): Fabric to simulated machines, VXLAN between them.

The machines are nsrecipes environments running a real sshd each (:mod:`tests.machines`);
the controller runs in a namespace of its own, so no packet crosses the host's.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from machines import cluster
from nsutil.errors import InvalidInput, NsrError
from recipes import machines as across
from recipes import topo, topofile

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


# --- real machines ---------------------------------------------------------------------------

def test_two_machines_vxlan_routes_check(tmp_path, backend):
    with cluster(2, tmp_path) as c:
        path = _lab(tmp_path, c)
        with c.controller(), topo.topology(file=path, backend=backend) as net:
            assert c.netns("m1") == [net.plan.hosts["h1"]]
            assert c.netns("m2") == sorted([net.plan.hosts["h2"], net.plan.hosts["h3"]])
            link = c.exec("m1", ["ip", "-n", net.plan.hosts["h1"], "-d", "link", "show",
                                 net.plan.hosts["h2"]]).stdout
            assert "vxlan id 1000 remote 10.250.0.12 local 10.250.0.11" in link
            assert "mtu 1450" in link and "dstport 4789" in link
            result = net.check()
            assert result["failed"] == [] and result["ok"] == 3
            assert result["hops"][("h1", "h3")] == 2      # through the router on m2
            big = c.exec("m1", ["ip", "netns", "exec", net.plan.hosts["h1"], "ping", "-c1", "-W5",
                                "-M", "do", "-s", "1422", str(net.plan.addrs()["h3"][0]).split("/")[0]])
            assert big.returncode == 0                   # 1450-byte packets fit the tunnel
            assert across.recorded(net.plan.scope)
        assert not across.recorded(net.plan.scope)
        _nothing_left(c)


def test_cli_build_check_show_down(tmp_path):
    with cluster(2, tmp_path) as c:
        path = _lab(tmp_path, c)
        up = c.invoke("net-topo", "--file", path, "--scope", "mx1", "--check")
        assert up.returncode == 0, up.stderr
        assert "built 3 hosts on 2 machines" in up.stdout and "check: 3/3 pairs" in up.stdout
        show = c.invoke("net-topo", "--show", "--scope", "mx1")
        assert show.returncode == 0, show.stderr
        assert "machine m2: root@10.250.0.12" in show.stdout and "MISSING" not in show.stdout
        assert "h1-h2 vni 1000" in show.stdout
        down = c.invoke("net-topo", "--down", "--scope", "mx1")
        assert down.returncode == 0, down.stderr
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


def test_three_machines_router_and_rate(tmp_path, backend):
    with cluster(3, tmp_path) as c:
        path = _lab(tmp_path, c, THREE)
        with c.controller(), topo.topology(file=path, backend=backend) as net:
            result = net.check()
            assert result["failed"] == [] and result["pairs"] == 6
            assert result["hops"][("a", "c")] == 3
            ns_a, dev = net.plan.hosts["a"], net.plan.hosts["r1"]
            qdisc = c.exec("m1", ["tc", "-n", ns_a, "qdisc", "show", "dev", dev]).stdout
            assert "tbf" in qdisc and "20Mbit" in qdisc
            vx = c.exec("m3", ["ip", "-n", net.plan.hosts["b"], "-d", "link", "show", dev]).stdout
            assert "vxlan id 77 remote 10.250.0.12" in vx
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
    with cluster(2, tmp_path) as c:
        path = _lab(tmp_path, c, venv={"m2": str(venv)})
        with pytest.raises(NsrError) as err, c.controller():
            with topo.topology(file=path):
                pass
        msg = str(err.value)
        assert msg.startswith("machine m2 (root@10.250.0.12): nsrecipes 0.0.1 is installed there")
        assert "machines-install" in msg and "\n" not in msg
        _nothing_left(c)


def test_sigkill_of_the_controller_then_cleanup(tmp_path):
    hosts = "".join(f'[hosts.x{i}]\nmachine = "m{1 + i % 2}"\n' for i in range(40))
    links = "".join(f'[[links]]\na = "x{i}"\nb = "x{i + 1}"\n' for i in range(39))
    routers = hosts.replace('machine = "m1"', 'machine = "m1"\nrouter = true').replace(
        'machine = "m2"', 'machine = "m2"\nrouter = true')
    with cluster(2, tmp_path) as c:
        path = _lab(tmp_path, c, routers + links)
        proc = subprocess.Popen(["ip", "netns", "exec", c.ctl, os.path.join(os.path.dirname(
            sys.executable), "invoke"), "net-topo", "--file", path, "--scope", "mk1",
            "--backend", "shell"], cwd=os.path.dirname(os.path.dirname(__file__)),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 600
        while not c.netns("m1") and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert proc.poll() is None, "the build ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)   # ip netns exec execs invoke: this is the controller
        proc.wait(60)
        for name in c.names:
            done = c.exec(name, [sys.executable, "-m", "recipes.remote", "cleanup"], check=False)
            assert done.returncode == 0, done.stdout + done.stderr
        _nothing_left(c)
        with c.controller():               # and the controller's own record of the lab
            from nsutil.backend import Runner
            assert across.down(Runner(backend="native", keep=True), "mk1") == ["mk1"]


def test_env_create_and_exec_on_a_machine(tmp_path):
    with cluster(2, tmp_path) as c:
        path = _lab(tmp_path, c)
        made = c.invoke("env-create", "nsr-mxenv", "--hostname", "inm2", "--machine", "m2",
                        "--file", path)
        assert made.returncode == 0, made.stderr
        assert "ready on machine m2" in made.stdout
        assert os.path.basename(c.state("m2")[0]) == "nsr-mxenv"
        ran = c.invoke("env-exec", "nsr-mxenv", "--machine", "m2", "--file", path, "--", "hostname")
        assert ran.returncode == 0, ran.stderr
        assert ran.stdout.strip() == "inm2"
        with c.controller():
            across.env_remote(across.machine_from_file(path, "m2"), ["env-rm", "nsr-mxenv"])
        _nothing_left(c)
