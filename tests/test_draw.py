"""Pictures (--draw FILE.svg): drawn from what the demos really made, opened in a real
browser (headless Chromium, tests/browser.py), and bad paths refused before anything is made."""
from __future__ import annotations

import glob
import io
import ipaddress
import os
import re
import time

import pytest

import browser
from helpers import cli, one_line_error
from nsutil import netlink as nl
from nsutil import process
from nsutil import syscalls as sc
from nsutil.backend import Runner
from nsutil.errors import InvalidInput, NsrError, ToolMissing
from nsutil.nstypes import ns_inode
from recipes.common import pictures as draw
from recipes import mount
from recipes import pid
from recipes.labs import shapes as topoplan
from recipes.labs import show as toposhow
from recipes import veth

IMPAIR = {"delay": "20ms", "jitter": "5ms", "loss": "1%", "rate": "10mbit"}


def _edges(svg: str) -> set[tuple[str, str]]:
    """(tail, head) node ids of every edge Graphviz wrote (its <title> is ``a->b``/``a--b``)."""
    titles = re.findall(r'<g id="edge\d+" class="edge">\s*<title>(.*?)</title>', svg)
    return {tuple(t.replace("&#45;", "-").replace("&gt;", ">").replace("->", "--").split("--"))
            for t in titles}


def _shapes(svg: str) -> dict[str, str]:
    """Node id -> the SVG element Graphviz drew it with (ellipse, or polygon with N points)."""
    out = {}
    for title, body in re.findall(r'class="node">\s*<title>(.*?)</title>(.*?)</g>', svg, re.S):
        poly = re.search(r'<polygon[^>]*points="([^"]*)"', body)
        out[title] = "ellipse" if "<ellipse" in body else f"polygon{len(poly.group(1).split()) - 1}"
    return out


# --- the demos' pictures --------------------------------------------------------------------

def test_mount_demo_draws_peer_groups_from_the_kernel(backend, tmp_path):
    path = str(tmp_path / "mounts.svg")
    with Runner(backend=backend, out=io.StringIO()) as run:
        seen = mount.demo(run, draw=path)
    rows = {m["point"]: m for m in seen["picture"]["mounts"]}
    assert set(rows) == set(mount.COLUMNS)
    group = rows["origin"]["shared"]            # the peer group the kernel gave origin
    assert group and rows["shared"]["shared"] == group
    assert rows["slave"]["master"] == group and rows["slave"]["shared"] is None
    inner = rows["shared-slave"]["shared"]
    assert inner not in (None, group) and rows["ss-peer"]["shared"] == inner
    assert rows["shared-slave"]["master"] == rows["ss-peer"]["master"] == group
    assert rows["unbindable"]["unbindable"] and rows["private"]["shared"] is None
    [shown] = browser.rendered([path])
    for name in mount.COLUMNS:
        assert name in shown["texts"]
    for m in rows.values():
        assert any(t.startswith(f"mount {m['id']} · ") for t in shown["texts"]), m
    assert f"peer group {group}" in shown["texts"] and f"peer group {inner}" in shown["texts"]
    assert f"mount {rows['shared-slave']['id']} · shared:{inner} master:{group}" in shown["texts"]
    assert "mount events seen: m1 m2 m3" in shown["texts"]      # the slave, as observed
    # the arrows: peers both ways, master group -> slave and -> the shared-slave group;
    # nothing touches private or unbindable
    with open(path) as f:
        edges = _edges(f.read())
    assert ("n_origin", "n_shared") in edges and ("n_shared_slave", "n_ss_peer") in edges
    assert ("n_origin", "n_slave") in edges and ("n_origin", "n_shared_slave") in edges
    assert not any(n in ("n_private", "n_unbindable") for e in edges for n in e)
    # part 2: the host's shared scratch mount and its copy inside are peers until
    # mount --make-rprivate / inside; then the copy is private and the host sees nothing
    rp = seen["picture"]["rprivate"]
    before, after = rp["before"], rp["after"]
    shared = before["host"]["shared"]
    assert shared and before["inside"]["shared"] == shared and before["seen_on_host"]
    assert after["host"]["shared"] == shared and after["inside"]["shared"] is None
    assert after["inside"]["id"] == before["inside"]["id"] and not after["seen_on_host"]
    assert "2. mount --make-rprivate /" in shown["texts"]
    assert f"mount {after['inside']['id']} · private (no optional fields)" in shown["texts"]
    assert shown["texts"].count(f"peers (shared:{shared})") == 1      # before only
    assert any(t.endswith("inside: not seen on the host") for t in shown["texts"])
    assert ("rp_before_host", "rp_before_inside") in edges
    assert seen["host_clean"] is True and not os.path.exists(seen["scratch"])


def test_pid_demo_draws_the_namespace_tree(backend, tmp_path):
    path = str(tmp_path / "pid.svg")
    with Runner(backend=backend, out=io.StringIO()) as run:
        seen = pid.demo(run, draw=path)
    tree = seen["picture"]
    assert [n["name"] for n in tree["namespaces"]] == ["host", "child", "grandchild"]
    assert tree["namespaces"][0]["inode"] == ns_inode("self", "pid")
    nspid = {tuple(p["nspid"]) for p in tree["processes"]}
    assert tuple(seen["holder"]["nspid"]) in nspid and tuple(seen["nested"]["nspid"]) in nspid
    [shown] = browser.rendered([path])
    host, mid, inner = seen["nested"]["nspid"]
    assert inner == 1
    for text in (f"host: PID {host}", f"child: PID {mid}", "grandchild: PID 1",
                 f"host: PID {seen['holder']['host_pid']}", "child: PID 1",
                 f"host: PID {os.getpid()}"):
        assert text in shown["texts"], text
    for ns in tree["namespaces"]:
        assert f"pid:[{ns['inode']}]" in shown["texts"]
    with open(path) as f:  # parent -> child: the nested holder hangs from its parent
        edges = _edges(f.read())
    parent = next(p["ppid"] for p in tree["processes"] if p["pid"] == host)
    assert (f"p{parent}", f"p{host}") in edges


def test_net_veth_draws_the_pair(backend, tmp_path):
    path = str(tmp_path / "veth.svg")
    name, peer = "nsr-pic1", "nsr-pic2"
    try:
        with Runner(backend=backend, out=io.StringIO(), keep=True) as run:
            made = veth.veth_create(run, name, peer, "10.203.0.1/24", "10.203.0.2/24")
            seen = veth.veth_observed(run, name, peer, made["reachable"])
            draw.veth(seen, path)
        inodes = [nl.netns_inode(name), nl.netns_inode(peer)]
    finally:
        with Runner(backend="native", out=io.StringIO(), keep=True) as run:
            veth.veth_delete(run, name, peer)
    assert [s["inode"] for s in seen["namespaces"]] == inodes
    [shown] = browser.rendered([path])
    for text in (f"netns {name}", f"netns {peer}", name, peer, "10.203.0.1/24",
                 "10.203.0.2/24", "veth pair", "packets go both ways",
                 f"net:[{inodes[0]}]", f"net:[{inodes[1]}]"):
        assert text in shown["texts"], text
    with open(path) as f:
        assert (f"n_{name}_{name}".replace("-", "_"), f"n_{peer}_{peer}".replace("-", "_")) \
            in _edges(f.read())


# --- net-topo pictures -------------------------------------------------------------------------

def star(n: int, scope: str = "ab12") -> dict:
    """``net-topo --show --json`` of a star: n hosts on the bridge of a hub namespace."""
    nodes = [{"name": "hub", "netns": f"nsr-{scope}-hub", "kind": "bridge",
              "bridges": [f"nsr-{scope}-br"], "interfaces": [], "routes": []}]
    links = []
    for i in range(1, n + 1):
        addr = f"10.200.{(i + 1) // 256}.{(i + 1) % 256}/16"
        nodes.append({"name": f"h{i}", "netns": f"nsr-{scope}-h{i}", "kind": "host",
                      "interfaces": [{"name": f"nsr-{scope}-hub", "addr": addr, "peer": "hub"}],
                      "routes": []})
        links.append({"a": f"h{i}", "a_if": f"nsr-{scope}-hub", "a_addr": addr, "b": "hub",
                      "b_if": f"nsr-{scope}-h{i}", "b_addr": None, "impair": None})
    return {"scope": scope, "shape": "star", "nodes": nodes, "links": links}


def _lab(shape: str, nodes: list[tuple[str, str]], pairs: list[tuple[str, str]],
         impair: dict | None = None, scope: str = "cd34") -> dict:
    """A lab of /30 links between the nodes (name, kind); the first link impaired."""
    subnets = ipaddress.ip_network("10.201.0.0/16").subnets(new_prefix=30)
    links = []
    for i, (a, b) in enumerate(pairs):
        ha, hb = list(next(subnets).hosts())
        links.append({"a": a, "a_if": f"nsr-{scope}-{b}", "a_addr": f"{ha}/30", "b": b,
                      "b_if": f"nsr-{scope}-{a}", "b_addr": f"{hb}/30",
                      "impair": impair if i == 0 else None})
    return {"scope": scope, "shape": shape, "links": links,
            "nodes": [{"name": n, "netns": f"nsr-{scope}-{n}", "kind": k, "bridges": [],
                       "interfaces": [], "routes": []} for n, k in nodes]}


def line(names: list[str], kinds: list[str], impair: dict | None = None) -> dict:
    """A line: each node linked to the next."""
    return _lab("line", list(zip(names, kinds)), list(zip(names, names[1:])), impair)


def tree() -> dict:
    """A tree: router r1 over routers r2, r3, each over three hosts."""
    nodes = [("r1", "router"), ("r2", "router"), ("r3", "router")]
    pairs = [("r1", "r2"), ("r1", "r3")]
    for i in range(1, 7):
        nodes.append((f"h{i}", "host"))
        pairs.append(("r2" if i <= 3 else "r3", f"h{i}"))
    lab = _lab("tree", nodes, pairs, IMPAIR)
    lab["nodes"][0]["routes"] = [{"dst": "10.201.0.16/30", "via": "10.201.0.2"}]
    return lab


SAMPLES = {
    "star3": star(3),
    "line4": line(["h1", "r1", "r2", "h2"], ["host", "router", "router", "host"], IMPAIR),
    "tree": tree(),
    "star100": star(100),
    "line100": line([f"h{i}" for i in range(1, 101)], ["host"] * 100),
    "star300": star(300),
    "line300": line([f"h{i}" for i in range(1, 301)], ["host"] * 300),
    # the planner's own 10,000-host tree (nothing is built): 11 routers over 1100 bridges
    "tree10000": toposhow.show_data(topoplan.plan_shape("tree", scope="cd34", depth=4, fanout=10)),
}


@pytest.fixture(scope="module")
def drawn(tmp_path_factory) -> dict:
    """Every sample drawn, timed, and opened in one browser: name -> (svg text, seconds,
    what the browser rendered)."""
    folder = tmp_path_factory.mktemp("topo")
    out, paths = {}, []
    for name, show in SAMPLES.items():
        path = str(folder / f"{name}.svg")
        start = time.monotonic()
        draw.topology(show, path)
        out[name] = [time.monotonic() - start]
        paths.append(path)
    for name, path, shown in zip(SAMPLES, paths, browser.rendered(paths)):
        with open(path) as f:
            out[name] = (f.read(), out[name][0], shown)
    return out


def _hosts(show: dict) -> set[str]:
    return {n["name"] for n in show["nodes"]}


@pytest.mark.userspace   # drawing a sample: no kernel involved
@pytest.mark.parametrize("name", ["star3", "line4", "tree", "star100", "line100"])
def test_topology_shows_every_host_readably(drawn, name):
    svg, seconds, shown = drawn[name]
    missing = _hosts(SAMPLES[name]) - set(shown["texts"])
    assert not missing, missing
    assert browser.overlapping(shown, set(shown["texts"])) == []   # no text over text
    if len(SAMPLES[name]["nodes"]) > 50:  # a big lab fits a screen's shape, not a long strip
        assert max(shown["width"] / shown["height"], shown["height"] / shown["width"]) < 4
    assert seconds < 30, f"{name}: {seconds:.1f} s to lay out"


@pytest.mark.userspace   # drawing a sample: no kernel involved
def test_topology_labels_links_and_shapes(drawn):
    svg, _, shown = drawn["line4"]
    assert "10.201.0.1/30 — 10.201.0.2/30" in shown["texts"]
    assert "20ms ±5ms 1% 10mbit" in shown["texts"]
    shapes = _shapes(svg)
    assert shapes["n_h1"] == "ellipse" and shapes["n_r1"] == "polygon4"
    assert _shapes(drawn["star3"][0])["n_hub"] == "polygon6"          # the bridge
    assert "nsr-ab12-br" in drawn["star3"][2]["texts"]
    assert "10.200.0.2/16" in drawn["star3"][2]["texts"]              # h1's address
    assert "→ 10.201.0.16/30 via 10.201.0.2" in drawn["tree"][2]["texts"]   # r1's route
    assert ("n_r1", "n_r2") in _edges(drawn["tree"][0])


@pytest.mark.userspace   # drawing a sample: no kernel involved
def test_topology_above_100_hosts_is_a_summary(drawn):
    svg, seconds, shown = drawn["star300"]
    assert "h1 … h300" in shown["texts"] and "(300 hosts)" in shown["texts"]
    assert "300 hosts, 1 bridge, 0 routers, 300 links" in shown["texts"]
    assert "h150" not in shown["texts"]
    assert len(re.findall(r'class="node"', svg)) == 2                  # the hub and the group
    assert seconds < 30
    svg, _, shown = drawn["line300"]
    assert "(300 hosts, linked host to host)" in shown["texts"]
    assert "300 hosts, 0 bridges, 0 routers, 299 links" in shown["texts"]
    # a tree's 1100 bridges are folded into the 10 routers above them: 21 nodes, not 1111
    svg, seconds, shown = drawn["tree10000"]
    assert "10000 hosts, 1100 bridges, 11 routers, 11110 links" in shown["texts"]
    assert "(110 bridges, 1000 hosts: h1 … h1000)" in shown["texts"]
    assert len(re.findall(r'class="node"', svg)) == 21 and seconds < 30
    assert ("n_s1", "n_s2") in _edges(svg) and ("n_s2", "fold_n_s2") in _edges(svg)


@pytest.mark.userspace   # drawing a sample: no kernel involved
def test_impair_text():
    assert draw.impair_text(IMPAIR) == "20ms ±5ms 1% 10mbit"
    assert draw.impair_text({"delay": "5ms"}) == "5ms"
    assert draw.impair_text(None) == ""


# --- bad paths --------------------------------------------------------------------------------

def _is_one_line(exc: NsrError) -> str:
    text = str(exc)
    assert "\n" not in text and "hint:" in text
    return text


@pytest.mark.userspace   # drawing a sample: no kernel involved
def test_bad_paths_are_refused_and_leave_nothing(tmp_path):
    with pytest.raises(InvalidInput) as err:
        draw.check_path(str(tmp_path / "missing" / "x.svg"))
    assert "does not exist" in _is_one_line(err.value)
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(InvalidInput) as err:
        draw.check_path(str(tmp_path / "file" / "x.svg"))
    assert "not a folder" in _is_one_line(err.value)
    with pytest.raises(InvalidInput) as err:
        draw.check_path(str(tmp_path / "x.png"))
    assert ".svg" in _is_one_line(err.value)
    with pytest.raises(InvalidInput):
        draw.check_path(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ["file"]


def test_unwritable_folder_is_refused(tmp_path):
    """A read-only bind mount of the folder, inside a mount namespace of the test's own."""
    folder = str(tmp_path)

    def inside() -> str:
        sc.make_propagation("/", "private", recursive=True)
        sc.mount(folder, folder, None, sc.MS_BIND)
        sc.mount(None, folder, None, sc.MS_BIND | sc.MS_REMOUNT | sc.MS_RDONLY)
        try:
            draw.check_path(os.path.join(folder, "x.svg"))
        except InvalidInput as exc:
            return str(exc)
        return "accepted"

    refused = process.spawn(inside, sc.CLONE_NEWNS)
    assert "cannot write" in refused and "Read-only file system" in refused
    assert "hint:" in refused
    assert os.listdir(folder) == []


@pytest.mark.parametrize("demo", [mount.demo, pid.demo])
def test_demo_with_a_bad_path_makes_nothing(demo, tmp_path):
    before = set(glob.glob("/tmp/nsr-*"))
    with Runner(backend="native", out=io.StringIO()) as run:
        with pytest.raises(InvalidInput):
            demo(run, draw=str(tmp_path / "missing" / "x.svg"))
    assert run.count == 0
    assert set(glob.glob("/tmp/nsr-*")) == before
    assert os.listdir(tmp_path) == []


@pytest.mark.userspace   # drawing a sample: no kernel involved
def test_missing_dot_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(ToolMissing) as err:
        draw.topology(star(3), str(tmp_path / "x.svg"))
    assert "apt-get install graphviz" in str(err.value)
    assert os.listdir(tmp_path) == []


# --- the command line -------------------------------------------------------------------------

def test_cli_mount_demo_draw(tmp_path):
    path = str(tmp_path / "mounts.svg")
    done = cli("mount-demo", "--draw", path, timeout=600)
    assert done.returncode == 0, done.stderr
    assert f"drew the peer groups into {path}" in done.stdout
    [shown] = browser.rendered([path])
    assert set(mount.COLUMNS) <= set(shown["texts"])


@pytest.mark.userspace
@pytest.mark.parametrize("task", ["mount-demo", "pid-demo", "net-veth"])
def test_cli_bad_draw_path_is_one_line(task, tmp_path):
    (tmp_path / "file").write_text("")
    for bad in (tmp_path / "missing" / "x.svg", tmp_path / "file" / "x.svg"):
        line = one_line_error(cli(task, "--draw", str(bad), "--name", "nsr-pic9")
                              if task == "net-veth" else cli(task, "--draw", str(bad)))
        assert line.startswith("nsrecipes: --draw ")
    assert sorted(os.listdir(tmp_path)) == ["file"]
    assert not nl.netns_exists("nsr-pic9")


@pytest.mark.userspace
def test_cli_explain_draws_nothing(tmp_path):
    path = tmp_path / "pid.svg"
    done = cli("pid-demo", "--explain", "--draw", str(path))
    assert done.returncode == 0, done.stderr
    assert "nothing is drawn" in done.stdout
    assert not path.exists()
    helptext = cli("mount-demo", "--help").stdout
    assert "--draw" in helptext and "peer" in helptext
