"""Network namespaces without root (document section "network namespace"): what
:mod:`recipes.net` shows, in namespaces owned by a user namespace of the user's own.

``ip netns add`` pins a name under /run/netns, root's directory, and a veth end on the host
needs root in the host's network namespace; so here processes hold the namespaces (reached by
PID: ``nsenter -t PID --user --preserve-credentials --net``), and a veth pair joins two
namespaces of the same user namespace (the second holder joins the first's user namespace
before it unshares its network namespace). What is left out is said in one line.
"""
from __future__ import annotations

import os
from typing import Sequence

from nsutil import netlink as nl
from nsutil import process
from nsutil import shell as nshell
from nsutil import syscalls as sc
from nsutil.backend import Runner, Step

from recipes import net
from recipes.common import reach
from recipes.common.holder import join_types, nsenter_argv, start_holder, start_holder_beside


#: what net-demo leaves out without root (said in one line)
NET_LEFT_OUT = ("a name under /run/netns (ip netns add: root's directory) and a veth end on the "
                "host (a user's network namespace reaches the host only through pasta or "
                "slirp4netns)")
#: what the tour's veth pair section leaves out without root (said in one line)
PAIR_LEFT_OUT = ("names under /run/netns for the two namespaces (root's directory): they are "
                 "held by two processes, reached by PID")


def demo(run: Runner) -> dict:
    """Without root: a holder in a new network namespace owned by a user namespace of the
    user's own (no name under /run/netns, root's): only ``lo``, down, then up. Returns what
    :func:`recipes.net.demo` returns, with the holder's pid for ``netns`` and ``left_out``."""
    run.heading(f"{net.SECTION} (CLONE_NEWNET): a new namespace has only lo")
    host_links = net.root_links()
    run.say(f"the host's namespace has {len(host_links)} links: {', '.join(host_links[:6])}"
            f"{' ...' if len(host_links) > 6 else ''}")
    run.say(f"left out without root: {NET_LEFT_OUT}")
    holder = start_holder(run, "net")
    types = join_types(holder, "net")

    def links() -> list[dict]:
        return run.run(Step("list the links inside", argv=run_inside_argv(holder, types,
                                                                         ["ip", "-o", "link", "show"]),
                            parse=net.parse_links, placeholder=[],
                            native=lambda: process.call_in(holder.pid, types, lambda: [
                                {"name": ln["name"], "up": ln["up"]} for ln in nl.links(None)])))

    before = links()
    enter = " ".join(map(str, run_inside_argv(holder, types, [])))
    run.say(f"$ {enter} ip link")
    for ln in before:
        run.say(f"  {ln['name']}: {'UP' if ln['up'] else 'DOWN'}")
    run.run(Step("bring lo up inside", argv=run_inside_argv(holder, types,
                                                            ["ip", "link", "set", "dev", "lo", "up"]),
                 native=lambda: process.call_in(holder.pid, types, lambda: net.native_up(None, "lo"))))
    after = links()
    run.say(f"$ {enter} sh -c 'ip link set lo up; ip link'")
    for ln in after:
        run.say(f"  {ln['name']}: {'UP' if ln['up'] else 'DOWN'}")
    run.learner_shell(hint="ip link (only lo); ping -c1 127.0.0.1; exit")
    run.undo()
    return {"netns": holder.pid, "links": [ln["name"] for ln in before],
            "host_links": host_links, "left_out": NET_LEFT_OUT,
            "lo_up_before": any(ln["up"] for ln in before if ln["name"] == "lo"),
            "lo_up_after": any(ln["up"] for ln in after if ln["name"] == "lo"),
            "gone": not holder.alive() if not run.explain else True}


def run_inside_argv(holder, types, argv: Sequence[str]) -> list:
    """``nsenter -t PID --user --preserve-credentials --net -- ARGV`` for a rootless holder."""
    return nsenter_argv(holder.pid, types, argv)


def pair_demo(run: Runner, addr: str = "10.199.0.1/24", peer_addr: str = "10.199.0.2/24") -> dict:
    """Without root: two network namespaces owned by one user namespace of the user's own
    (held by two processes, no /run/netns names), a veth pair made from the first with its
    peer put straight into the second (``netns PID``), and real packets (shell: ping;
    native: a UDP datagram and its reply). Returns ``ok``, the holders' pids, ``gone``."""
    addr, peer_addr = net.check_addr(addr), net.check_addr(peer_addr, "peer address")
    run.heading(f"{net.SECTION} (CLONE_NEWNET): two namespaces joined by a veth pair")
    run.say(f"left out without root: {PAIR_LEFT_OUT}")
    a = start_holder(run, "net")
    b = start_holder_beside(run, a, "net")
    in_a, in_b = join_types(a, "net"), join_types(b, "net")
    a_name, b_name = "nsr-a", "nsr-b"

    def make_pair() -> None:
        fd = os.open(f"/proc/{b.pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            with nl.Rtnl(nl.rtnl_socket(None)) as r:
                r.new_link(nl.link_body(a_name, kind="veth",
                                        peer=nl.link_body(b_name, netns_fd=fd)),
                           f"ip link add {a_name} type veth peer name {b_name} netns {b.pid}")
                r.flush()
        finally:
            os.close(fd)

    run.run(Step(f"create veth pair {a_name} (pid {a.pid}) <-> {b_name} (pid {b.pid}), the "
                 "peer made in place", argv=run_inside_argv(a, in_a, [
                     "ip", "link", "add", a_name, "type", "veth", "peer", "name", b_name,
                     "netns", b.pid]),
                 native=lambda: process.call_in(a.pid, in_a, make_pair)))
    for holder, types, name, cidr in ((a, in_a, a_name, addr), (b, in_b, b_name, peer_addr)):
        def configure(n: str = name, c: str = cidr) -> None:
            net.native_addr(None, n, c)
            net.native_up(None, n)
        run.run(Step(f"address {cidr} on {name} and bring it up (pid {holder.pid})",
                     argv=run_inside_argv(holder, types, [
                         "sh", "-c", 'ip addr add "$1" dev "$2" && ip link set dev "$2" up',
                         "sh", cidr, name]),
                     native=lambda h=holder, t=types, f=configure: process.call_in(h.pid, t, f)))
    ip_b = net.ip_of(peer_addr)

    def exchange() -> bool:
        sa = reach.udp_socket(None, addr)          # in a's namespace (joined by call_in)
        try:
            fd = os.open(f"/proc/{b.pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
            try:
                sc.setns(fd, sc.CLONE_NEWNET)        # root of the same user namespace may
            finally:
                os.close(fd)
            sb = reach.udp_socket(None, peer_addr)
            try:
                return reach.udp_exchange(sa, sb, 5.0)
            finally:
                sb.close()
        finally:
            sa.close()

    ok = run.run(Step(f"send packets pid {a.pid} -> pid {b.pid} ({ip_b}) and back",
                      argv=run_inside_argv(a, in_a, ["ping", "-c", "1", "-W", "2", ip_b]),
                      shell=lambda argv: _quiet_ok(argv),
                      native=lambda: process.call_in(a.pid, in_a, exchange), placeholder=True))
    run.say(f"{a_name} (pid {a.pid}, {addr}) <-> {b_name} (pid {b.pid}, {peer_addr}): "
            f"{'packets go both ways' if ok else 'NO packets got through'}")
    run.undo()
    gone = run.explain or not (a.alive() or b.alive())
    run.say("stopped both holders: their namespaces, and the pair, went with them")
    return {"ok": ok, "holders": [a.pid, b.pid], "gone": gone}


def _quiet_ok(argv: list[str]) -> bool:
    """Run ``argv``; True if it exits 0 (its output is not shown)."""
    return nshell.run_full(argv).returncode == 0
