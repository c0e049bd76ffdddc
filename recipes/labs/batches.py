"""The shell form of a lab's build: the ``ip`` batches a learner would type, and the order
they may run in.

Document section "Network namespace" (topologies). A lab is built by

1. one ``ip -batch`` of ``netns add`` for every namespace (:func:`root_lines`);
2. one ``ip -batch`` inside each namespace (:func:`enter_argv`): the links made from inside
   it (a bridge, the veths whose a end is there, each peer made in place in its own
   namespace, :func:`create_lines`),
   then its addresses, links up and routes (:func:`ns_lines`);
3. one ``ip -batch`` of ``netns exec NS sysctl`` where a namespace forwards or needs a
   longer TTL (:func:`sysctl_lines`).

The batches of step 2 run in *rounds* (:func:`rounds`): a namespace's batch sets up the veth
peers other namespaces made in it, so it runs in a round after theirs; the batches of one
round are independent and run side by side, up to one per CPU (``xargs -P $(nproc)``). A
star is two rounds (the hub, then every host), a tree one round per level. Where the links
go round in a circle (a ring, some lab files) no order works: every namespace first makes
its links (one round), then sets up its devices (a second).
"""
from __future__ import annotations

from nsutil import netlink as nl
from nsutil import shell

from recipes.labs import routes as toporoute
from recipes.labs.plan import Plan

#: one batch of step 2: (namespace, its lines, the step's title)
Batch = tuple[str, list[str], str]


def root_lines(plan: Plan) -> list[str]:
    """The root namespace's batch: one ``netns add`` per namespace."""
    return [f"netns add {ns}" for ns in plan.all_netns()]


def create_lines(plan: Plan) -> dict[str, list[str]]:
    """Per namespace, the links made *from inside it*: the bridge in the hub, and every veth
    from the namespace of its a end, the b end placed in its own namespace in place.

    Kernels before 6.14 (Debian 12's 6.1, Ubuntu 24.04's 6.8) look an existing device up
    by ifindex, else by name, in the *sender's* namespace, even when the new one goes
    elsewhere (``netns X``): ``ip link add name A netns X ...`` run in the root namespace
    fails with EEXIST if the root has a link A. Sent from inside X, the lookup is in the
    namespace the device really goes to, on every kernel.
    """
    per: dict[str, list[str]] = {}
    for ns, bridges in plan.bridges.items():
        per[ns] = [f"link add name {br} type bridge" for br in bridges]
    for ln in plan.links:
        per.setdefault(ln.a_ns, []).append(
            f"link add name {ln.a_if} type veth peer name {ln.b_if} netns {ln.b_ns}")
    return per


def ns_lines(plan: Plan) -> dict[str, list[str]]:
    """Per namespace: ``lo`` up, every device of it up (enslaved to its bridge, IPv6
    link-local off unless the plan wants IPv6), its addresses, then its routes."""
    per: dict[str, list[str]] = {ns: ["link set lo up"] for ns in plan.all_netns()}
    quiet = (lambda ns, dev: per[ns].append(f"link set dev {dev} addrgenmode none")) if not plan.ipv6 \
        else (lambda ns, dev: None)
    for ns, bridges in plan.bridges.items():
        for br in bridges:
            quiet(ns, br)
            per[ns].append(f"link set dev {br} up")
            if plan.bridge_addrs.get(ns, {}).get(br):
                per[ns].append(f"addr add {plan.bridge_addrs[ns][br]} dev {br}")
    for ln in plan.links:
        for ns, dev, master, addr in ((ln.a_ns, ln.a_if, ln.a_master, ln.a_addr),
                                      (ln.b_ns, ln.b_if, ln.b_master, ln.b_addr)):
            quiet(ns, dev)
            per[ns].append(f"link set dev {dev}{f' master {master}' if master else ''} up")
            if addr:
                per[ns].append(f"addr add {addr} dev {dev}")
    nodes = plan.nodes()
    for name, routes in plan.routes.items():          # hosts', and a routed tree's switches'
        per[nodes[name]] += [f"route add {dst} via {via}" for dst, via in routes]
    return per


def sysctl_lines(plan: Plan) -> list[str]:
    """The root namespace's batch of ``netns exec NS sysctl -w ...`` (forwarding, TTL)."""
    out = []
    for host, ns in plan.nodes().items():
        values = toporoute.sysctls(plan, host)
        if values:
            settings = " ".join(f"{k}={v}" for k, v in values.items())
            out.append(f"netns exec {ns} sysctl -q -w {settings}")
    return out


def levels(plan: Plan) -> dict[str, int] | None:
    """Each namespace's round: 0 where no other namespace makes a device in it, else one
    more than the latest of those that do; None when they go round in a circle."""
    makers: dict[str, set[str]] = {ns: set() for ns in plan.all_netns()}
    for ln in plan.links:
        if ln.b_ns != ln.a_ns:
            makers[ln.b_ns].add(ln.a_ns)
    level: dict[str, int] = {}
    todo = [ns for ns in plan.all_netns()]
    while todo:
        ready = [ns for ns in todo if all(m in level for m in makers[ns])]
        if not ready:
            return None
        for ns in ready:
            level[ns] = max((level[m] + 1 for m in makers[ns]), default=0)
        todo = [ns for ns in todo if ns not in level]
    return level


def rounds(plan: Plan) -> list[list[Batch]]:
    """Step 2's batches in rounds: within a round independent, each round after the one
    before (see the module docstring)."""
    creates, config = create_lines(plan), ns_lines(plan)
    level = levels(plan)
    if level is None:                                 # a circle: make everything, then set up
        made = [(ns, lines, f"create {len(lines)} link(s) from inside {ns}, veth peers made "
                            "in place in their namespaces") for ns, lines in creates.items()]
        return [made, [(ns, lines, f"addresses, links up and routes in {ns}")
                       for ns, lines in config.items()]]
    out: list[list[Batch]] = [[] for _ in range(max(level.values(), default=-1) + 1)]
    for ns in plan.all_netns():
        made = creates.get(ns, [])
        title = (f"create {len(made)} link(s) from inside {ns} (veth peers made in place in "
                 "their namespaces), then its addresses, links up and routes") if made \
            else f"addresses, links up and routes in {ns}"
        out[level[ns]].append((ns, made + config[ns], title))
    return out


def enter_argv(ns: str) -> list[str]:
    """The command that runs a batch inside ``ns``: ``nsenter --net=/run/netns/NS ip -batch -``
    (``ip -n NS -batch -`` where util-linux's nsenter is missing).

    Both enter the namespace; ``ip -n`` also makes a mount namespace of its own (to mount
    that namespace's /sys), and the kernel copies every mount there is into it -- each
    named network namespace is one. Measured on a 2-core machine, one batch of one line:
    ``ip -n`` 1.7 ms with 10 namespaces, 8.1 ms with 1000, 14.8 ms with 3000; nsenter
    2.2, 4.5 and 3.7 ms. A batch of links, addresses and routes needs no /sys."""
    if shell.have("nsenter"):
        return ["nsenter", f"--net={nl.netns_path(ns)}", "ip", "-batch", "-"]
    return ["ip", "-n", ns, "-batch", "-"]


def display(lines: list[str], ns: str | None = None) -> str:
    """``ip -batch - <<EOF`` (inside ``ns``: :func:`enter_argv`) with ``lines`` (the first 8
    and the last of many)."""
    shown = lines if len(lines) <= 12 else lines[:8] + [f"... ({len(lines) - 9} more)", lines[-1]]
    head = " ".join(enter_argv(ns)) if ns else "ip -batch -"
    return f"{head} <<EOF\n        " + "\n        ".join(shown) + "\n        EOF"


def native_display(plan: Plan, most: int = 3) -> str:
    """The shell commands the one native build step stands for (the first ``most``
    namespaces' batches)."""
    first = [b for batches in rounds(plan) for b in batches]
    parts = [display(root_lines(plan))] + [display(lines, ns) for ns, lines, _t in first[:most]]
    if len(first) > most:
        parts.append(f"... ({len(first) - most} more namespaces' batches)")
    return "\n      ".join(parts)
