"""Pictures: what a recipe made, drawn as an SVG with Graphviz (``--draw FILE.svg``).

The document's sections "mount namespace" and "Network namespace" point at two figures that
are missing from it (mount-namespace.png, network.png). Here they are drawn from the kernel's
own state, as the recipes observed it, plus the PID namespace tree and a picture of a lab:

* :func:`mounts` -- the peer groups of ``/proc/PID/mountinfo`` (``shared:N``, ``master:N``)
  and the arrows along which a mount event propagates;
* :func:`veth` -- two network namespaces joined by a veth pair (names, addresses);
* :func:`pid_tree` -- nested PID namespaces, each process with its PID at every level
  (the ``NSpid`` line of /proc/PID/status);
* :func:`topology` -- a lab of ``net-topo`` (hosts, bridges, routers, links with addresses
  and impairments); above :data:`SUMMARY_ABOVE` hosts, a summary.

This module only turns data into a file: it never runs a step and never touches a namespace.
Graphviz (the ``graphviz`` package driving Debian's ``dot``) is imported when a picture is
drawn, so checking a path (:func:`check_path`, done before a recipe makes anything) is cheap.
"""
from __future__ import annotations

import html
import os
import re
import tempfile
from typing import Any, Iterable

from nsutil.errors import InvalidInput, NsrError, ToolMissing

FORMATS = (".svg",)
SUMMARY_ABOVE = 100       #: more hosts than this: the lab is drawn as a summary
SUMMARY_NODES = 60        #: a summary draws at most about this many bridges and routers
SNAKE_ABOVE = 12          #: a longer line or ring is drawn as a snake, ROW nodes a row
ROW = 10
FONT = "Helvetica,Arial,sans-serif"
SHAPE = {"host": "ellipse", "router": "box", "bridge": "hexagon"}
COLOUR = {"host": "#e8f0fe", "router": "#fde7c8", "bridge": "#dcf5dc", "group": "#f1f3f4"}


# --- the output file ----------------------------------------------------------------------

def check_path(path: str) -> str:
    """The absolute path of ``path`` if a picture can be written there, else InvalidInput
    (one line and a hint): it must end in ``.svg`` and its folder must exist, be a folder
    and be writable (tried by making and removing a file there). Nothing is left behind."""
    if not path or not path.lower().endswith(FORMATS):
        raise InvalidInput(f"--draw {path!r}: the picture must be an .svg file",
                           hint="give a path ending in .svg, e.g. --draw mounts.svg")
    full = os.path.abspath(path)
    folder = os.path.dirname(full)
    if os.path.isdir(full):
        raise InvalidInput(f"--draw {path}: is a directory", hint="give a file name ending in .svg")
    if not os.path.exists(folder):
        raise InvalidInput(f"--draw {path}: the folder {folder} does not exist",
                           hint="make it first (mkdir -p), or draw somewhere else")
    if not os.path.isdir(folder):
        raise InvalidInput(f"--draw {path}: {folder} is not a folder",
                           hint="give a path whose folder is a directory")
    try:
        fd, probe = tempfile.mkstemp(prefix=".nsr-draw-", suffix=".svg", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise InvalidInput(f"--draw {path}: cannot write in {folder}: {exc.strerror}",
                           hint="pick a folder you can write to") from None
    return full


def _render(graph: Any, path: str, engine: str = "dot") -> str:
    """Lay ``graph`` out with ``engine`` and write it to ``path`` as SVG, atomically (a
    temporary file in the same folder, renamed): a failure leaves nothing. Returns path."""
    from graphviz import ExecutableNotFound
    full = check_path(path)
    try:
        svg = graph.pipe(format="svg", engine=engine)
    except ExecutableNotFound:
        raise ToolMissing(engine, "graphviz") from None
    fd, tmp = tempfile.mkstemp(prefix=".nsr-draw-", suffix=".svg", dir=os.path.dirname(full))
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(svg)
        os.chmod(tmp, 0o644)
        os.replace(tmp, full)
    except OSError as exc:
        os.unlink(tmp)
        raise InvalidInput(f"--draw {path}: cannot write: {exc.strerror}",
                           hint="pick a folder you can write to") from None
    return full


def _new(kind: str = "digraph", **attrs: str) -> Any:
    """A Graphviz graph with this module's fonts and look."""
    try:
        import graphviz
    except ImportError:
        raise NsrError("the Python package graphviz is not installed",
                       hint="run ./bootstrap, or .venv/bin/pip install graphviz") from None
    cls = graphviz.Digraph if kind == "digraph" else graphviz.Graph
    return cls(graph_attr={"fontname": FONT, "fontsize": "12", "labelloc": "t", **attrs},
               node_attr={"fontname": FONT, "fontsize": "11", "style": "filled",
                          "fillcolor": "white"},
               edge_attr={"fontname": FONT, "fontsize": "9"})


def label(*lines: Any, bold_first: bool = True) -> str:
    """A Graphviz HTML label: one line per item (each becomes one <text> in the SVG),
    escaped; the first in bold. Empty items are dropped."""
    parts = [html.escape(str(x)) for x in lines if x not in (None, "")]
    if parts and bold_first:
        parts[0] = f"<B>{parts[0]}</B>"
    return "<" + "<BR/>".join(parts) + ">"


def _id(text: str) -> str:
    return "n_" + re.sub(r"[^A-Za-z0-9_]", "_", text)


# --- mount namespace: peer groups and propagation -------------------------------------------

def _mount_tags(m: dict) -> str:
    tags = [f"shared:{m['shared']}" if m.get("shared") else "",
            f"master:{m['master']}" if m.get("master") else "",
            f"propagate_from:{m['propagate_from']}" if m.get("propagate_from") else "",
            "unbindable" if m.get("unbindable") else ""]
    return " ".join(t for t in tags if t) or "private (no optional fields)"


def mounts(data: dict, path: str) -> str:
    """Draw mount peer groups: ``data`` is ``{"scratch", "pid", "mounts": [{"point", "id",
    "shared", "master", "propagate_from", "unbindable", "state", "received"}], "refused"}``
    as :func:`recipes.mount.demo` read them from /proc/PID/mountinfo. Mounts sharing
    ``shared:N`` are one cluster (events go both ways between them); an arrow goes from peer
    group N to every mount with ``master:N`` (events go one way); private and unbindable
    mounts get no arrows. Returns the path written."""
    g = _new(rankdir="LR", compound="true", nodesep="0.4", ranksep="1.1",
             label=label(f"mount peer groups read from /proc/{data.get('pid', 'PID')}/mountinfo",
                         f"under {data.get('scratch', '')}",
                         "a mount event propagates along the arrows: both ways between peers,",
                         "one way from a master to its slaves; private and unbindable mounts "
                         "get none"))
    groups: dict[int, list[dict]] = {}
    for m in data["mounts"]:
        if m.get("shared"):
            groups.setdefault(m["shared"], []).append(m)
    colour = {"shared": "#e8f0fe", "slave": "#fff4d6", "shared and slave": "#e6f4ea",
              "private": "#eeeeee", "unbindable": "#fde0e0"}

    def node(parent: Any, m: dict) -> None:
        got = m.get("received")
        state = m.get("state", "")
        lines = [m["point"], f"mount {m.get('id', '?')} · {_mount_tags(m)}",
                 state if state not in ("private", "unbindable") else ""]
        if got is not None:
            lines.append("mount events seen: " + (" ".join(got) if got else "none"))
        if m.get("unbindable"):
            lines.append("mount --bind from it: refused" if data.get("refused") else "")
        parent.node(_id(m["point"]), label(*lines), shape="box",
                    fillcolor=colour.get(m.get("state", ""), "white"),
                    style="filled,dashed" if m.get("unbindable") else "filled",
                    color="#c5221f" if m.get("unbindable") else "black")

    if data.get("rprivate"):   # drawn first: Graphviz puts it below part 1
        _rprivate(g, data["rprivate"], data.get("scratch", ""), colour)
    with g.subgraph(name="cluster_states") as part1:
        part1.attr(label=label("1. the five propagation states, in a new mount namespace"),
                   style="rounded", color="#5f6368")
        for n, members in sorted(groups.items()):
            with part1.subgraph(name=f"cluster_{n}") as c:
                c.attr(label=label(f"peer group {n}", "shared:" + str(n) + ": events go both ways"),
                       style="rounded", color="#1a73e8")
                for m in members:
                    node(c, m)
                for a, b in zip(members, members[1:]):
                    c.edge(_id(a["point"]), _id(b["point"]), dir="both", color="#1a73e8",
                           label="peers")
        for m in data["mounts"]:
            if not m.get("shared"):
                node(part1, m)
    done = set()
    for m in data["mounts"]:
        master = m.get("master")
        if not master:
            continue
        if master in groups:
            tail, attrs = _id(groups[master][0]["point"]), {"ltail": f"cluster_{master}"}
        else:  # the master group has no member under the scratch tree
            tail, attrs = f"g_{master}", {}
            g.node(tail, label(f"peer group {master}", "(outside this tree)"), shape="box",
                   style="rounded,dashed")
        own = m.get("shared")
        if own in groups:  # a slave that is also shared: its whole group receives
            if (master, own) in done:
                continue
            done.add((master, own))
            attrs["lhead"] = f"cluster_{own}"
        g.edge(tail, _id(m["point"]), label=f"master:{master} → slave", color="#e37400",
               penwidth="2", **attrs)
    return _render(g, path)


def _rprivate(g: Any, part: dict, scratch: str, colour: dict[str, str]) -> None:
    """Part 2 of the mount picture: the host's shared scratch mount and its copy in a mount
    namespace made with propagation unchanged: peers before ``mount --make-rprivate /``
    inside (a tmpfs mounted inside is seen on the host), cut off after it."""
    steps = {"before": "before: unshare --mount --propagation unchanged",
             "after": "after: mount --make-rprivate / inside"}
    with g.subgraph(name="cluster_rprivate") as c:
        c.attr(label=label("2. mount --make-rprivate /",
                           f"the scratch mount on the host and in the namespace of pid {part['pid']}"),
               style="rounded", color="#5f6368")
        for when, title in steps.items():
            side = part[when]
            host, inside = side.get("host", {}), side.get("inside", {})
            with c.subgraph(name=f"cluster_rp_{when}") as w:
                w.attr(label=label(title), style="dashed", color="#5f6368")
                for where, m in (("host", host), ("inside", inside)):
                    seen = (f"mount -t tmpfs nsr-{when} {part['probe']} inside: "
                            f"{'seen on the host' if side['seen_on_host'] else 'not seen on the host'}"
                            if where == "inside" else "")
                    w.node(f"rp_{when}_{where}",
                           label(f"{where}: {scratch}", f"mount {m.get('id', '?')} · {_mount_tags(m)}", seen),
                           shape="box", fillcolor=colour["shared" if m.get("shared") else "private"])
                if host.get("shared") and host["shared"] == inside.get("shared"):
                    w.edge(f"rp_{when}_host", f"rp_{when}_inside", dir="both", color="#1a73e8",
                           label=f"peers (shared:{host['shared']})")
                else:
                    w.edge(f"rp_{when}_host", f"rp_{when}_inside", style="invis")   # layout only


# --- network namespace: a veth pair ----------------------------------------------------------

def veth(data: dict, path: str) -> str:
    """Draw two network namespaces joined by a veth pair: ``data`` is ``{"namespaces":
    [{"name", "inode", "links": [{"name", "kind", "up", "addrs"}]}], "pair": [[ns, ifname],
    [ns, ifname]], "reachable"}`` as :func:`recipes.veth.veth_observed` read them.
    Returns the path written."""
    g = _new(kind="graph", rankdir="LR", nodesep="0.3", ranksep="1.4",
             label=label("two network namespaces joined by a veth pair",
                         "read from the kernel (netlink / ip addr) after net-veth made them"))
    for ns in data["namespaces"]:
        with g.subgraph(name=f"cluster_{_id(ns['name'])}") as c:
            c.attr(label=label(f"netns {ns['name']}", f"net:[{ns.get('inode', '?')}]"),
                   style="rounded,filled", fillcolor="#f8f9fa", color="#5f6368")
            for ln in ns["links"]:
                is_veth = ln.get("kind") == "veth"
                c.node(_id(f"{ns['name']}/{ln['name']}"),
                       label(ln["name"], "veth" if is_veth else ln.get("kind") or "",
                             *(ln.get("addrs") or ["no address"]),
                             "UP" if ln.get("up") else "DOWN"),
                       shape="box" if is_veth else "ellipse",
                       fillcolor="#e8f0fe" if is_veth else "#eeeeee")
    (a_ns, a_if), (b_ns, b_if) = data["pair"]
    reach = data.get("reachable")
    g.edge(_id(f"{a_ns}/{a_if}"), _id(f"{b_ns}/{b_if}"), penwidth="3", color="#1a73e8",
           label=label("veth pair", {True: "packets go both ways", False: "no packets",
                                     None: ""}[reach], bold_first=False))
    return _render(g, path)


# --- PID namespaces: the tree -----------------------------------------------------------------

def pid_tree(data: dict, path: str) -> str:
    """Draw nested PID namespaces: ``data`` is ``{"namespaces": [{"inode", "name", "level"}],
    "processes": [{"pid", "ppid", "comm", "pidns", "nspid"}]}`` (``nspid`` outermost first,
    as /proc/PID/status shows it). Each process sits in its own namespace's box and is
    labelled with its PID as every level sees it; arrows go from parent to child process.
    Returns the path written."""
    g = _new(rankdir="TB", compound="true",
             label=label("PID namespaces: each process with its PID at every level",
                         "(the NSpid line of /proc/PID/status, read from the host)",
                         "a parent namespace sees its children's processes, a child none of "
                         "its parent's; arrows: parent process -> child"))
    levels = sorted(data["namespaces"], key=lambda n: n["level"])
    names = [n["name"] for n in levels]
    placed = {n["inode"]: [] for n in levels}
    for p in data["processes"]:
        placed.setdefault(p["pidns"], []).append(p)

    def fill(parent: Any, depth: int) -> None:
        ns = levels[depth]
        with parent.subgraph(name=f"cluster_pid{depth}") as c:
            c.attr(label=label(f"{ns['name']} PID namespace (level {depth})",
                               f"pid:[{ns['inode']}]"),
                   style="rounded,filled", fillcolor=["#f8f9fa", "#e8f0fe", "#e6f4ea",
                                                      "#fef7e0"][depth % 4], color="#5f6368")
            for p in placed.get(ns["inode"], []):
                seen = [f"{names[i] if i < len(names) else i}: PID {pid}"
                        for i, pid in enumerate(p["nspid"])]
                c.node(f"p{p['pid']}", label(p["comm"], *seen), shape="box")
            if depth + 1 < len(levels):
                fill(c, depth + 1)

    fill(g, 0)
    known = {p["pid"] for p in data["processes"]}
    for p in data["processes"]:
        if p.get("ppid") in known:
            g.edge(f"p{p['ppid']}", f"p{p['pid']}", color="#5f6368", arrowsize="0.7")
    return _render(g, path)


# --- net-topo: a lab ----------------------------------------------------------------------------

def impair_text(impair: dict | None) -> str:
    """``{"delay": "20ms", "jitter": "5ms", "loss": "1%", "rate": "10mbit"}`` ->
    ``20ms ±5ms 1% 10mbit`` (the order ``tc qdisc ... netem`` takes them)."""
    form = {"jitter": "±{}", "corrupt": "corrupt {}", "duplicate": "dup {}"}
    return " ".join(form.get(key, "{}").format(impair[key]) for key in
                    ("delay", "jitter", "loss", "rate", "corrupt", "duplicate")
                    if impair and impair.get(key))


def _natural(name: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _engine(shape: str, count: int) -> str:
    """The layout: a star radiates from its bridge (twopi), a small ring is a circle (circo),
    trees, lines and small labs are layered (dot), a big lab is force-directed (sfdp)."""
    if shape == "star":
        return "twopi"
    if shape == "ring" and count <= SNAKE_ABOVE:
        return "circo"
    if shape in ("tree", "line", "ring") or count <= 30:
        return "dot"
    return "sfdp"


def _order(show: dict) -> dict[str, tuple[int, int]]:
    """A long line or ring laid out as a snake: node -> (row, column), :data:`ROW` a row,
    every other row right to left, so each link is short."""
    names = [n["name"] for n in show["nodes"]]
    out = {}
    for i, name in enumerate(names):
        row, col = divmod(i, ROW)
        out[name] = (row, col if row % 2 == 0 else ROW - 1 - col)
    return out


def _ends(ln: dict, place: dict[str, tuple[int, int]]) -> tuple[str, str, str | None, str | None]:
    """(tail, head, tail address, head address): in a snake, the left node is the tail."""
    a, b, a_addr, b_addr = ln["a"], ln["b"], ln.get("a_addr"), ln.get("b_addr")
    if a in place and b in place and place[a][0] == place[b][0] and place[a][1] > place[b][1]:
        return b, a, b_addr, a_addr
    return a, b, a_addr, b_addr


def topology(show: dict, path: str) -> str:
    """Draw a lab from ``net-topo --show --json`` data (``scope``, ``shape``, ``nodes`` with
    ``kind`` host/router/bridge, ``links`` with addresses and ``impair``): hosts are
    ellipses, routers boxes, bridges hexagons; each link is labelled with its two addresses
    (an address facing a bridge, or any address in a lab of more than 30 nodes, is written
    in its node instead) and its impairment. Above :data:`SUMMARY_ABOVE` hosts,
    :func:`topology_summary`. Returns the path written."""
    hosts = [n for n in show["nodes"] if n.get("kind", "host") == "host"]
    total = show.get("hosts", len(hosts))          # routers that are hosts too (a line's)
    if total > SUMMARY_ABOVE:
        return topology_summary(show, path)
    shape, count = show.get("shape", "file"), len(show["nodes"])
    engine, big = _engine(shape, count), count > 30
    kind = {n["name"]: n.get("kind", "host") for n in show["nodes"]}
    attrs = {"outputorder": "edgesfirst"}
    if engine in ("sfdp", "neato"):
        attrs.update(overlap="prism", splines="true")
    hub = next((n for n, k in kind.items() if k == "bridge"), None)
    if engine == "twopi" and hub:  # one ring of hosts around the bridge, wide enough
        chars = max([15] + [len(n["name"]) for n in show["nodes"]]) + 3  # name or address
        attrs.update(root=_id(hub), ranksep=f"{max(1.5, count * chars * 0.075 / 6.28):.1f}")
    snake = engine == "dot" and shape in ("line", "ring") and count > SNAKE_ABOVE
    place = _order(show) if snake else {}
    if engine == "dot":
        attrs.update(rankdir="LR" if shape == "line" and not place else "TB", nodesep="0.5")
    g = _new(kind="graph", **attrs,
             label=label(f"net-topo lab {show.get('scope', '')}: {shape}, {total} hosts, "
                         f"{len(show.get('routers', []))} routing, {len(show['links'])} links"))
    in_node: dict[str, list[str]] = {n: [] for n in kind}
    for ln in show["links"]:
        for end, other in (("a", "b"), ("b", "a")):
            if ln.get(f"{end}_addr") and (big or kind[ln[other]] == "bridge"):
                in_node[ln[end]].append(ln[f"{end}_addr"])
    rows: dict[int, list[str]] = {}
    for n in show["nodes"]:
        k = n.get("kind", "host")
        extra = list(n.get("bridges") or []) if k == "bridge" else []
        if k == "router" and not big:
            extra += [f"→ {r['dst']} via {r['via']}" for r in n.get("routes", [])[:4]]
        g.node(_id(n["name"]), label(n["name"], "" if big else n.get("netns", ""),
                                     *in_node[n["name"]], *extra),
               shape=SHAPE.get(k, "ellipse"), fillcolor=COLOUR.get(k, "white"))
        if n["name"] in place:
            rows.setdefault(place[n["name"]][0], []).append(_id(n["name"]))
    for members in rows.values():
        with g.subgraph() as s:
            s.attr(rank="same")
            for m in members:
                s.node(m)
    for ln in show["links"]:
        tail, head, t_addr, h_addr = _ends(ln, place)
        shown = [a for a in (t_addr, h_addr) if a and a not in in_node[tail] + in_node[head]]
        far = place and abs(place[tail][0] - place[head][0]) > 1
        g.edge(_id(tail), _id(head),
               label=label(" — ".join(shown), impair_text(ln.get("impair")), bold_first=False),
               color="#c5221f" if ln.get("impair") else "#5f6368",
               **({"constraint": "false"} if far else {}))
    return _render(g, path, engine)


def _groups(show: dict) -> tuple[dict[str, list[str]], list[str]]:
    """Hosts collapsed for a summary: {bridge/router: [the hosts hanging off it]} and the
    hosts linked only to hosts (a line or ring of plain hosts)."""
    kind = {n["name"]: n.get("kind", "host") for n in show["nodes"]}
    neigh: dict[str, set[str]] = {n: set() for n in kind}
    for ln in show["links"]:
        neigh[ln["a"]].add(ln["b"])
        neigh[ln["b"]].add(ln["a"])
    attached: dict[str, list[str]] = {}
    loose = []
    for name in (n for n, k in kind.items() if k == "host"):
        others = sorted(x for x in neigh[name] if kind[x] != "host")
        if others:
            attached.setdefault(others[0], []).append(name)
        else:
            loose.append(name)
    return attached, loose


def _count(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _span(names: Iterable[str]) -> str:
    ordered = sorted(names, key=_natural)
    return ordered[0] if len(ordered) == 1 else f"{ordered[0]} … {ordered[-1]}"


def _fold(kinds: dict[str, str], links: list[dict]) -> tuple[set[str], dict[str, list[str]]]:
    """A big tree's bridges folded into their parents, a level at a time from the leaves,
    until at most SUMMARY_NODES bridges and routers (and folds) are left to draw: the nodes
    still drawn, and {parent: the bridges folded into it, at every level below}."""
    alive = {n for n, k in kinds.items() if k != "host"}
    up: dict[str, set[str]] = {n: set() for n in alive}
    for ln in links:
        if ln["a"] in alive and ln["b"] in alive:
            up[ln["a"]].add(ln["b"])
            up[ln["b"]].add(ln["a"])
    folded: dict[str, list[str]] = {}
    while len(alive) + len(folded) > SUMMARY_NODES:
        leaves = [n for n in alive if kinds[n] == "bridge" and len(up[n] & alive) == 1]
        if not leaves:
            break
        for n in leaves:
            (parent,) = up[n] & alive
            folded.setdefault(parent, []).extend([n] + folded.pop(n, []))
            alive.discard(n)
    return alive, folded


def topology_summary(show: dict, path: str) -> str:
    """Draw a big lab as a summary: bridges and routers as nodes, the hosts that hang off
    each collapsed into one node ``h1 … h300 (300 hosts)``, a big tree's lower bridges
    folded into their parents (:func:`_fold`), and a caption with the counts. Returns the
    path written."""
    kinds = {n["name"]: n.get("kind", "host") for n in show["nodes"]}
    counts = [list(kinds.values()).count(k) for k in ("host", "bridge", "router")]
    attached, loose = _groups(show)
    impaired = sum(1 for ln in show["links"] if ln.get("impair"))
    g = _new(kind="graph", rankdir="TB",
             label=label(f"net-topo lab {show.get('scope', '')}: {show.get('shape', '')} "
                         f"(summary: more than {SUMMARY_ABOVE} hosts)",
                         ", ".join(_count(n, w) for n, w in zip(
                             counts + [len(show["links"])], ("host", "bridge", "router", "link")))
                         + (f", {impaired} impaired" if impaired else ""), bold_first=False))
    alive, folded = _fold(kinds, show["links"])
    for n in show["nodes"]:
        if n["name"] in alive:
            g.node(_id(n["name"]), label(n["name"], *(n.get("bridges") or [])),
                   shape=SHAPE[kinds[n["name"]]], fillcolor=COLOUR[kinds[n["name"]]])
    for owner, members in attached.items():
        if owner in alive:
            g.node(f"grp_{_id(owner)}", label(_span(members), f"({_count(len(members), 'host')})"),
                   shape="folder", fillcolor=COLOUR["group"])
            g.edge(f"grp_{_id(owner)}", _id(owner), label=_count(len(members), "link"))
    for parent, bridges in folded.items():
        hosts = [h for b in bridges for h in attached.get(b, [])]
        g.node(f"fold_{_id(parent)}", label(_span(bridges), f"({_count(len(bridges), 'bridge')}, "
                                            f"{_count(len(hosts), 'host')}: {_span(hosts)})"),
               shape="folder", fillcolor=COLOUR["bridge"])
        g.edge(_id(parent), f"fold_{_id(parent)}")
    if loose:
        g.node("loose", label(_span(loose), f"({_count(len(loose), 'host')}, linked host to host)"),
               shape="folder", fillcolor=COLOUR["group"])
    for ln in show["links"]:  # links between the bridges and routers drawn stay
        if ln["a"] in alive and ln["b"] in alive:
            g.edge(_id(ln["a"]), _id(ln["b"]), label=impair_text(ln.get("impair")))
    return _render(g, path, "dot")
