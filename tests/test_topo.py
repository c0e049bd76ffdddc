"""Topologies against the real kernel: star/line/ring on both backends, the TOML file format,
/etc/netns hosts, net-exec, --check with real packets, two topologies at once, a failure
half-way undone, and bad files. Traffic only between namespaces the tests made.
"""
from __future__ import annotations

import os
import subprocess
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from helpers import cli, one_line_error
from nsutil import netlink as nl
from nsutil.backend import Runner
from nsutil.errors import InvalidInput, NsrError
from nsutil.names import scope_id

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")


def _ip_addrs(ns: str) -> str:
    return subprocess.run(["ip", "-n", ns, "-o", "-4", "addr"], capture_output=True, text=True,
                          check=True).stdout


# shape, hosts, pairs that must reach each other, a far pair and the hops measured between them
SHAPES = [("star", 4, 6, ("h1", "h4"), 1), ("line", 4, 6, ("h1", "h4"), 3),
          ("ring", 5, 10, ("h1", "h3"), 2), ("tree", 4, 6, ("h1", "h4"), 1)]


@pytest.mark.parametrize("shape,hosts,pairs,far,longest", SHAPES)
def test_shapes_build_check_and_tear_down(backend, tag, shape, hosts, pairs, far, longest):
    """Every host reaches every other, along its shortest path: the hops are measured from
    the TTL of real packets (a line's and ring's inner hosts route, a tree's bridges do not)."""
    from recipes.labs import build as topo
    with topo.topology(shape, hosts, backend=backend, scope=tag, depth=2, fanout=2) as net:
        names = net.plan.all_netns()
        assert all(n.startswith(f"nsr-{tag}-") and len(n) <= 15 for n in names)
        assert set(names) <= set(nl.list_netns())
        result = net.check()
        assert result["pairs"] == pairs and result["ok"] == pairs and not result["failed"]
        assert result["hops"][far] == longest
        # visible to ip: every host has its addresses, interfaces named after the neighbour
        for host in net.hosts:
            for cidr in net.plan.addrs()[host]:
                assert cidr in _ip_addrs(net.netns(host))
        if shape == "star":
            hub = subprocess.run(["ip", "-n", net.plan.hub, "-o", "link", "show", "master",
                                  net.plan.bridge], capture_output=True, text=True).stdout
            assert hub.count("state UP") == hosts
        # IPv6 link-local autoconf is off on lab links by default (addrgenmode none)
        six = subprocess.run(["ip", "-n", net.netns("h1"), "-6", "-o", "addr"],
                             capture_output=True, text=True).stdout
        assert "fe80" not in six
        # /etc/netns hosts: names resolve inside (ip netns exec / native exec alike)
        other = net.hosts[1]
        done = net.run(net.hosts[0], ["getent", "hosts", other])
        assert done.returncode == 0 and net.addr(other) in done.stdout
    assert not [n for n in nl.list_netns() if f"-{tag}-" in n]
    assert not [d for d in os.listdir("/etc/netns") if f"-{tag}-" in d] if os.path.isdir("/etc/netns") else True
    with Runner(backend=backend, keep=True, out=open(os.devnull, "w")) as run:
        assert topo.down(run, tag) == []      # down again: idempotent, as runc delete --force


def _has_link_local(ns: str) -> bool:
    out = subprocess.run(["ip", "-n", ns, "-6", "-o", "addr"], capture_output=True, text=True).stdout
    return "fe80" in out


def test_ipv6_autoconf_on_when_asked(backend, tag):
    """The kernel adds a link-local address when it sees the veth's carrier come up, and it
    sees carrier changes through linkwatch, which batches them up to a second apart: the
    address may come a second after the build returns, so the test waits for it (10 s, for
    a loaded emulated VM). Without --ipv6 none ever comes."""
    from recipes.labs import build as topo
    from nsutil import process
    with topo.topology("line", 2, backend=backend, scope=tag, ipv6=True) as net:
        process.wait_for(lambda: _has_link_local(net.netns("h2")), 10, "an fe80:: address")
    with topo.topology("line", 2, backend=backend, scope=tag) as net:  # torn down above
        time.sleep(1.5)   # longer than linkwatch's batching
        assert not _has_link_local(net.netns("h2"))


def test_check_reports_a_broken_link(tag):
    from recipes.labs import build as topo
    with topo.topology("star", 3, backend="native", scope=tag) as net:
        subprocess.run(["ip", "-n", net.netns("h2"), "link", "set", net.plan.hub, "down"], check=True)
        result = net.check()
        assert result["failed"] and all("h2" in pair for pair in result["failed"])
        assert result["ok"] == 1   # h1 <-> h3 still works


def test_file_format_with_given_and_automatic_addresses(backend, tag, tmp_path):
    from recipes.labs import build as topo
    lab = tmp_path / "lab.toml"
    lab.write_text(textwrap.dedent("""
        subnet = "10.240.0.0/16"
        [hosts.web]
        [hosts.db]
        [hosts.r1]
        router = true
        [[links]]
        a = "web"
        b = "r1"
        a_addr = "10.241.0.1/24"
        b_addr = "10.241.0.2/24"
        [[links]]
        a = "db"
        b = "r1"
    """))
    with topo.topology(file=str(lab), backend=backend, scope=tag) as net:
        assert set(net.hosts) == {"r1", "web", "db"}
        assert "10.241.0.1/24" in _ip_addrs(net.netns("web"))
        assert "10.240.0.1/30" in _ip_addrs(net.netns("db"))
        assert "10.240.0.2/30" in _ip_addrs(net.netns("r1"))
        link = subprocess.run(["ip", "-n", net.netns("web"), "-o", "link"], capture_output=True,
                              text=True).stdout
        assert net.netns("r1") in link         # the interface is named after its neighbour
        result = net.check()
        assert (result["pairs"], result["ok"], result["failed"]) == (3, 3, [])
        assert result["hops"][("web", "db")] == 2          # through the router r1
        fwd = net.run("r1", ["cat", "/proc/sys/net/ipv4/ip_forward"]).stdout.strip()
        assert fwd == "1" and net.run("web", ["cat", "/proc/sys/net/ipv4/ip_forward"]).stdout.strip() == "0"


BAD_FILES = {
    "overlap": ('[[links]]\na="a"\nb="b"\na_addr="10.1.0.1/16"\nb_addr="10.1.0.2/16"\n'
                '[[links]]\na="b"\nb="c"\na_addr="10.1.5.1/24"\nb_addr="10.1.5.2/24"\n', "overlap"),
    "self": ('[[links]]\na="a"\nb="a"\n', "itself"),
    "one address": ('[[links]]\na="a"\nb="b"\na_addr="10.1.0.1/24"\n', "only one address"),
    "bad cidr": ('[[links]]\na="a"\nb="b"\na_addr="10.1.0.1/24"\nb_addr="10.1.0.x/24"\n',
                 "not an address"),
    "long name": ('hosts = ["averyverylongname"]\n', "limit is"),
    "slash": ('hosts = ["a/b"]\n', "not allowed"),
    "dot": ('hosts = [".."]\n', "not allowed"),
    "empty": ('hosts = [""]\n', "empty"),
    "no hosts": ('subnet = "10.9.0.0/16"\n', "no hosts"),
    "not toml": ('hosts = [\n', "not valid TOML"),
    "unknown key": ('routers = 3\n', "unknown key"),
    "twice": ('[[links]]\na="a"\nb="b"\n[[links]]\na="b"\nb="a"\n', "two links"),
    "not listed": ('hosts = ["a", "b"]\n[[links]]\na="a"\nb="c"\n', "link 1 \\(a-c\\) names host 'c', "
                   "which is not in hosts"),
}


@pytest.mark.userspace
@pytest.mark.parametrize("name", list(BAD_FILES))
def test_bad_files_are_refused_before_anything_is_made(name, tmp_path):
    from recipes.labs import build as topo
    text, words = BAD_FILES[name]
    lab = tmp_path / "lab.toml"
    lab.write_text(text)
    with pytest.raises(InvalidInput, match=words):
        topo.plan_file(str(lab))


@pytest.mark.userspace
def test_bad_file_through_the_cli(tmp_path):
    lab = tmp_path / "lab.toml"
    lab.write_text(BAD_FILES["overlap"][0])
    scope = scope_id()
    proc = cli("net-topo", "--file", str(lab), "--scope", scope)
    assert "overlap" in one_line_error(proc) and proc.returncode == 2
    assert not [n for n in nl.list_netns() if f"-{scope}-" in n]


@pytest.mark.userspace
def test_generated_names_fit_and_samples_are_bounded():
    from recipes.labs import build as topo
    plan = topo.plan_shape("star", topo.MAX_HOSTS)
    names = plan.all_netns() + [ln.a_if for ln in plan.links] + [ln.b_if for ln in plan.links]
    assert all(n.startswith("nsr-") and len(n.encode()) <= 15 for n in names)
    assert plan.pair_count() == topo.MAX_HOSTS * (topo.MAX_HOSTS - 1) // 2
    sample = plan.pairs(100, seed=1)
    assert len(sample) == 100 and len({(a, b) for a, _, b, _ in sample}) == 100
    line = topo.plan_shape("line", 5)
    assert len(line.pairs(100)) == line.pair_count() == 10     # routed: every pair
    assert topo.plan_shape("ring", 5).pair_count() == 10


def test_failure_half_way_is_undone(backend, tag):
    from recipes.labs import build as topo
    plan = topo.plan_shape("line", 4, tag)
    plan.links[-1].a_if = "x" * 20        # the kernel (and ip) refuse it: after others exist
    with pytest.raises(NsrError):
        with Runner(backend=backend, keep=True, out=open(os.devnull, "w")) as run:
            topo.build(run, plan)
    assert not [n for n in nl.list_netns() if f"-{tag}-" in n]
    assert not topo.recorded(tag)


@pytest.mark.userspace
def test_two_topologies_at_once_through_the_cli(tag):
    from recipes.labs import build as topo
    scopes = [tag[:3] + "x", tag[:3] + "y"]
    try:
        with ThreadPoolExecutor(2) as pool:
            procs = list(pool.map(lambda s: cli("net-topo", "--hosts", "4", "--scope", s, "--check",
                                                "--backend", "native"), scopes))
        for proc in procs:
            assert proc.returncode == 0, proc.stderr
            assert "check: 6/6 pairs exchanged packets" in proc.stdout
        status = cli("net-topo", "--status").stdout
        assert all(s in status for s in scopes)
        # same short name in both: net-exec needs --scope, then runs in the right namespace
        amb = cli("net-exec", "h1", "--", "true")
        assert "several topologies" in one_line_error(amb)
        done = cli("net-exec", "h1", "--scope", scopes[1], "--", "ip", "-o", "-4", "addr")
        assert done.returncode == 0 and "10.200.0.1/16" in done.stdout
        rc = cli("net-exec", f"nsr-{scopes[0]}-h2", "--", "sh", "-c", "exit 7")
        assert rc.returncode == 7
        for s in scopes:
            down = cli("net-topo", "--down", "--scope", s)
            assert down.returncode == 0, down.stderr
            assert not topo.recorded(s)
        assert not [n for n in nl.list_netns() if any(f"-{s}-" in n for s in scopes)]
    finally:
        for s in scopes:
            for plan in topo.recorded(s):
                with Runner(backend="native", keep=True, out=open(os.devnull, "w")) as run:
                    run.run(topo.teardown_step(plan))


def test_shell_build_uses_ip_batch_and_explain_changes_nothing():
    proc = cli("net-topo", "--hosts", "3", "--scope", "ex", "--explain", "--backend", "shell")
    assert proc.returncode == 0, proc.stderr
    assert "ip -batch -" in proc.stdout and "netns add nsr-ex-h1" in proc.stdout
    # every veth is made from inside its a end's namespace (the hub), the peer in place
    assert "nsenter --net=/run/netns/nsr-ex-hub ip -batch" in proc.stdout
    assert "link add name nsr-ex-h1 type veth peer name nsr-ex-hub netns nsr-ex-h1" in proc.stdout
    assert "nsenter --net=/run/netns/nsr-ex-h2 ip -batch" in proc.stdout
    assert not [n for n in nl.list_netns() if n.startswith("nsr-ex-")]
