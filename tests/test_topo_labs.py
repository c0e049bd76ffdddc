"""Network labs against the real kernel: routers and their shortest-path routes (hops measured
from real packets' TTL), trees, big stars and trees cut into routed segments, TOML labs with
routers and impairments, --show/--json/--draw, and bad labs refused before anything is made.

The segment size is lowered for two tests (``SEGMENT_MAX`` 3 instead of 500) so that a lab of
a few hosts has the layout of a 10,000-host one: the kernel objects are real, only the
threshold is small (a real 10,000-host lab is bench/net_topo.py's job: it takes a minute).
Traffic only between namespaces the tests made.
"""
from __future__ import annotations

import json
import os
import subprocess
import textwrap

import pytest

from helpers import cli, one_line_error
from nsutil import netlink as nl
from nsutil.errors import InvalidInput, NotFound
from nsutil.names import scope_id

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")


def _ours(tag: str) -> list[str]:
    return [n for n in nl.list_netns() if f"-{tag}-" in n]


def _ip(ns: str, *args: str) -> str:
    return subprocess.run(["ip", "-n", ns, *args], capture_output=True, text=True, check=True).stdout


def test_line_routes_are_shortest_paths_and_only_routers_forward(backend, tag):
    """A line of 6: h2..h5 forward (ip_forward=1 in their namespaces only), h1 and h6 do not;
    h1 reaches h6 in 5 hops; the routes `ip route` shows are the plan's, merged prefixes."""
    from recipes.labs import build as topo
    host_forwarding = open("/proc/sys/net/ipv4/ip_forward").read()
    with topo.topology("line", 6, backend=backend, scope=tag) as net:
        result = net.check()
        assert result["ok"] == result["pairs"] == 15, (result["failed"], result["hops"])
        assert result["hops"][("h1", "h6")] == 5 and result["hops"][("h2", "h4")] == 2
        for host in net.hosts:
            fwd = net.run(host, ["cat", "/proc/sys/net/ipv4/ip_forward"]).stdout.strip()
            assert fwd == ("1" if host in ("h2", "h3", "h4", "h5") else "0"), host
        routes = _ip(net.netns("h1"), "-4", "route", "show")
        for dst, via in net.plan.routes["h1"]:
            assert f"{dst} via {via}" in routes
        assert len(net.plan.routes["h1"]) < 4          # 4 far links, merged
    assert open("/proc/sys/net/ipv4/ip_forward").read() == host_forwarding
    assert not _ours(tag)


def test_ring_takes_the_short_way_round(tag):
    """A ring of 6: h1 -> h4 is 3 hops either way, h1 -> h5 is 2 (backwards, not 4)."""
    from recipes.labs import build as topo
    with topo.topology("ring", 6, backend="native", scope=tag) as net:
        result = net.check()
        assert not result["failed"]
        assert result["hops"][("h1", "h4")] == 3 and result["hops"][("h1", "h5")] == 2


def test_tree_as_mininet(backend, tag):
    """depth 2, fanout 3: 4 bridge namespaces, 9 hosts at the leaves, one L2 segment."""
    from recipes.labs import build as topo
    with topo.topology("tree", backend=backend, scope=tag, depth=2, fanout=3) as net:
        assert len(net.hosts) == 9 and list(net.plan.switches) == ["s1", "s2", "s3", "s4"]
        ports = _ip(net.plan.switches["s1"], "-o", "link", "show", "master", f"nsr-{tag}-br")
        assert ports.count("state UP") == 3              # its three child switches
        result = net.check()
        assert result["ok"] == result["pairs"] and set(result["hops"].values()) == {1}


@pytest.fixture
def small_segments(monkeypatch):
    """Segments of 3 hosts instead of 500 (see the module docstring)."""
    from recipes.labs import plan as topoplan
    monkeypatch.setattr(topoplan, "SEGMENT_MAX", 3)


def test_big_star_is_cut_into_routed_segments(backend, tag, small_segments):
    """8 hosts, segments of 3: three bridges in the hub, each its own subnet with the hub's
    address on it; the hub forwards; across segments 2 hops, within 1."""
    from recipes.labs import build as topo
    with topo.topology("star", 8, backend=backend, scope=tag) as net:
        hub = net.plan.hub
        assert net.plan.bridges[hub] == [f"nsr-{tag}-br", f"nsr-{tag}-br2", f"nsr-{tag}-br3"]
        addrs = _ip(hub, "-4", "-o", "addr")
        assert all(cidr in addrs for cidr in net.plan.bridge_addrs[hub].values())
        assert net.run("h1", ["cat", "/proc/sys/net/ipv4/ip_forward"]).stdout.strip() == "0"
        result = net.check()
        assert result["ok"] == result["pairs"] and not result["failed"]
        assert result["hops"][("h1", "h2")] == 1 and result["hops"][("h1", "h8")] == 2


def test_big_tree_routes_at_its_root(tag, small_segments):
    """depth 2, fanout 3 with segments of 3: the root s1 forwards (no bridge), each subtree
    is a subnet of its own."""
    from recipes.labs import build as topo
    with topo.topology("tree", backend="native", scope=tag, depth=2, fanout=3) as net:
        assert net.plan.switches["s1"] not in net.plan.bridges and net.plan.routers == ["s1"]
        result = net.check()
        assert result["ok"] == result["pairs"] == 36
        assert result["hops"][("h1", "h3")] == 1 and result["hops"][("h1", "h9")] == 2


@pytest.mark.parametrize("depth, fanout, segment, hops", [
    (3, 2, 3, {("h1", "h2"): 1, ("h1", "h3"): 2, ("h1", "h8"): 4}),   # routes at 2 levels
    (2, 2, 1, {("h1", "h2"): 2, ("h1", "h4"): 4}),                    # every host a segment
])
def test_big_tree_routes_at_as_many_levels_as_it_needs(backend, tag, monkeypatch, depth,
                                                       fanout, segment, hops):
    """A tree whose root's subtrees are still too big for one segment (as --depth 4
    --fanout 10: subtrees of 1000) routes at the next level too: s1 and its children
    forward, s4..s7 bridge; routes are merged per child router, a default route points
    up; the hops measured from real packets are 2 per routed level the path crosses."""
    from recipes.labs import build as topo
    from recipes.labs import plan as topoplan
    monkeypatch.setattr(topoplan, "SEGMENT_MAX", segment)
    with topo.topology("tree", backend=backend, scope=tag, depth=depth, fanout=fanout) as net:
        routers = [s for s in net.plan.switches if s in net.plan.routers]
        assert routers == ["s1", "s2", "s3"]
        for name, ns in net.plan.switches.items():
            fwd = subprocess.run(["ip", "netns", "exec", ns, "cat", "/proc/sys/net/ipv4/ip_forward"],
                                 capture_output=True, text=True, check=True).stdout.strip()
            assert fwd == ("1" if name in routers else "0"), name
            assert (ns in net.plan.bridges) == (name not in routers), name
        shown = _ip(net.plan.switches["s2"], "-4", "route", "show")
        assert "default via" in shown                      # up, towards s1
        assert len(net.plan.routes["s1"]) <= 2             # one prefix per child router
        result = net.check()
        assert result["ok"] == result["pairs"] == len(net.hosts) * (len(net.hosts) - 1) // 2
        for pair, want in hops.items():
            assert result["hops"][pair] == want, pair
    assert not _ours(tag)


LAB = """
subnet = "10.242.0.0/16"
[hosts.a]
[hosts.r1]
router = true
[hosts.r2]
router = true
[hosts.b]
[[links]]
a = "a"
b = "r1"
[[links]]
a = "r1"
b = "r2"
rate = "20mbit"
[[links]]
a = "r2"
b = "b"
"""


def test_file_lab_with_routers_and_a_rate(backend, tag, tmp_path):
    """a - r1 - r2 - b: 3 hops from a to b; the rate is a tbf on both ends of r1-r2 that
    `tc -n NS qdisc show` shows (tbf needs no netem, so this runs on every kernel)."""
    from recipes.labs import build as topo
    lab = tmp_path / "lab.toml"
    lab.write_text(LAB)
    with topo.topology(file=str(lab), backend=backend, scope=tag) as net:
        result = net.check()
        assert result["ok"] == result["pairs"] == 6 and result["hops"][("a", "b")] == 3
        for host, dev in (("r1", net.netns("r2")), ("r2", net.netns("r1"))):
            shown_tc = subprocess.run(["tc", "-n", net.netns(host), "qdisc", "show", "dev", dev],
                                      capture_output=True, text=True).stdout
            assert "tbf" in shown_tc and "20Mbit" in shown_tc, shown_tc
        shown = topo.show_data(net.plan)
        link = next(ln for ln in shown["links"] if {ln["a"], ln["b"]} == {"r1", "r2"})
        assert link["impair"] == {"rate": "20mbit"}
        assert {n["name"]: n["kind"] for n in shown["nodes"]}["r1"] == "router"
    assert not _ours(tag)


def test_api_impairments_on_named_links(tag):
    """topology(links={(a, b): {...}}) impairs that link only; an unknown link is refused
    before anything is made."""
    from recipes.labs import build as topo
    with topo.topology("line", 3, backend="native", scope=tag,
                       links={("h2", "h3"): {"rate": "50mbit"}}) as net:
        impaired = [ln for ln in net.plan.links if ln.impair]
        assert [(ln.a_host, ln.b_host) for ln in impaired] == [("h2", "h3")]
        out = subprocess.run(["tc", "-n", net.netns("h3"), "qdisc", "show"], capture_output=True,
                             text=True).stdout
        assert "tbf" in out
    with pytest.raises(NotFound):
        with topo.topology("line", 3, backend="native", scope=tag, links={"h1:h3": {"rate": "1mbit"}}):
            pass
    assert not _ours(tag)


def test_show_json_and_draw_through_the_cli(tag, tmp_path):
    """One real CLI build with --check and --draw, and --show --json reading it back (two
    CLI starts: each costs seconds in the VM; tests/test_draw.py opens lab pictures in
    Chromium)."""
    from recipes.labs import build as topo
    picture = tmp_path / "lab.svg"
    proc = cli("net-topo", "--shape", "line", "--hosts", "4", "--scope", tag, "--check",
               "--draw", str(picture), "--backend", "native")
    try:
        assert proc.returncode == 0, proc.stderr
        assert "h1 -> h4: 3 hops" in proc.stdout
        data = json.loads(cli("net-topo", "--show", "--json", "--scope", tag).stdout)["topologies"][0]
        assert data["routers"] == ["h2", "h3"] and len(data["links"]) == 3
        assert all(node["up"] for node in data["nodes"])
        assert "router" in "\n".join(topo.show_lines(data))
        svg = picture.read_text()
        assert svg.startswith("<?xml") and all(f">{h}<" in svg for h in ("h1", "h2", "h3", "h4"))
    finally:
        with open(os.devnull, "w") as out:
            from nsutil.backend import Runner
            topo.down(Runner(backend="native", keep=True, out=out), tag)
    assert not _ours(tag)


BAD_LABS = {
    "typo": ('[[links]]\na = "x"\nb = "y"\ndealy = "5ms"\n', r"lab.toml:4: unknown link key 'dealy'"),
    "top typo": ('hosts = ["a"]\nlinkz = []\n', r"lab.toml:2: unknown key 'linkz'"),
    "host typo": ('[hosts.r1]\nrouter = true\nmachin = "m1"\n', r"lab.toml:3: unknown host key 'machin'"),
    "bad delay": ('[[links]]\na = "x"\nb = "y"\ndelay = "soon"\n', r"lab.toml:4: .*delay"),
    "negative": ('[[links]]\na = "x"\nb = "y"\njitter = "1ms"\ndelay = "-5ms"\n', r"lab.toml:5: .*delay"),
    "loss": ('[[links]]\na = "x"\nb = "y"\nloss = "120%"\n', r"lab.toml:4: .*loss"),
    "rate 0": ('[[links]]\na = "x"\nb = "y"\nrate = "0mbit"\n', r"lab.toml:4: .*rate"),
    "unreachable": ('[[links]]\na = "x"\nb = "m"\n[[links]]\na = "m"\nb = "y"\n',
                    r"cannot reach each other: x-y .*router = true"),
    "lone host": ('hosts = ["x", "y", "z"]\n[[links]]\na = "x"\nb = "y"\n', r"cannot reach each other: .*z"),
}


@pytest.mark.userspace
@pytest.mark.parametrize("name", list(BAD_LABS))
def test_bad_labs_name_the_line(name, tmp_path):
    from recipes.labs import build as topo
    text, words = BAD_LABS[name]
    lab = tmp_path / "lab.toml"
    lab.write_text(text)
    with pytest.raises(InvalidInput, match=words):
        topo.plan_file(str(lab))


@pytest.mark.userspace
@pytest.mark.parametrize("args,words", [
    (["--shape", "tree", "--depth", "0"], "tree depth 0 is out of range"),
    (["--shape", "tree", "--depth", "3", "--fanout", "30"], "27000 hosts; the limit is 10000"),
    (["--shape", "star", "--hosts", "10001"], "out of range"),
    (["--shape", "line", "--hosts", "300"], "paths of 299 hops"),
])
def test_labs_over_the_limits_are_refused_in_one_line(args, words):
    scope = scope_id()
    proc = cli("net-topo", *args, "--scope", scope)
    assert words in one_line_error(proc) and proc.returncode == 2
    assert not _ours(scope)


@pytest.mark.userspace
def test_a_bad_lab_through_the_cli_leaves_nothing(tmp_path):
    lab = tmp_path / "lab.toml"
    lab.write_text(textwrap.dedent(BAD_LABS["typo"][0]))
    scope = scope_id()
    proc = cli("net-topo", "--file", str(lab), "--scope", scope)
    assert "unknown link key 'dealy'" in one_line_error(proc) and proc.returncode == 2
    assert not _ours(scope)
