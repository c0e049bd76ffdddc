"""Network namespace recipes against the real kernel: net-demo, veth pairs, net-veth
(idempotency, conflicts, bad input through the real CLI), leftovers and cleanup after a
SIGKILL half-way. Traffic only between namespaces the tests made (10.x addresses inside them).
"""
from __future__ import annotations

import functools
import os
import signal
import subprocess
import time

import pytest

from helpers import ROOT, INVOKE, cli, one_line_error
from nsutil import netlink as nl
from nsutil.backend import Runner
from nsutil.errors import Conflict, InvalidInput
from nsutil.names import scope_id
from recipes.common import reach

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")


def _ours(tag: str) -> list[str]:
    return [n for n in nl.list_netns() if tag in n]


@pytest.fixture
def tag():
    """A per-test scope; whatever carries it is removed at the end even if the test fails."""
    value = scope_id()
    yield value
    from recipes import net
    for item in net.leftovers():
        if value in item.name:
            item.remove()


def test_demo_new_netns_has_only_lo_down_then_up(runner):
    from recipes import net
    seen = net.demo(runner)
    assert seen["links"] == ["lo"]
    assert seen["lo_up_before"] is False
    assert seen["lo_up_after"] is True
    assert seen["gone"] is True


def test_demo_records_its_namespace_while_it_runs(runner, monkeypatch):
    """Mid-demo the namespace is in a record naming this process as its creator (so cleanup
    removes it if the run is killed, and keeps it while the run goes on); afterwards the
    record is gone with the namespace."""
    from recipes.ops import cleanup
    from recipes import net
    seen: list[tuple[set[str], list[str]]] = []
    show_links = net.show_links

    def spy(run, name):
        kept = [k.name for k in cleanup._demos_in_use()]
        seen.append((net.recorded_netns(), kept))
        return show_links(run, name)

    monkeypatch.setattr(net, "show_links", spy)
    name = net.demo(runner)["netns"]
    recorded, kept = seen[0]
    assert name in recorded and name in kept
    assert name not in net.recorded_netns() and not nl.netns_exists(name)


def test_netns_is_visible_to_the_standard_tools(backend, tag):
    from recipes import net
    name = f"nsr-{tag}-vis"
    with Runner(backend=backend) as run:
        net.create_netns(run, name)
        assert name in subprocess.run(["ip", "netns", "list"], capture_output=True,
                                      text=True).stdout.split()
        inside = subprocess.run(["nsenter", f"--net=/run/netns/{name}", "ip", "-o", "link"],
                                capture_output=True, text=True, check=True).stdout
        assert [ln.split(":")[1].strip() for ln in inside.splitlines()] == ["lo"]
        # the bind mount is an nsfs mount, as ip makes it, and /run/netns is shared
        mounts = open("/proc/self/mountinfo").read().splitlines()
        mine = [ln for ln in mounts if ln.split()[4] == f"/run/netns/{name}"]
        assert mine and " nsfs " in mine[0]
        prop = subprocess.run(["findmnt", "-n", "-o", "PROPAGATION", "/run/netns"],
                              capture_output=True, text=True).stdout.split()
        assert prop and prop[0] == "shared"
        assert nl.netns_inode(name) != os.stat("/proc/self/ns/net").st_ino
        # lsns (util-linux 2.38) lists namespaces that have a process; its NSFS column then
        # names our bind mount
        sleeper = subprocess.Popen(["ip", "netns", "exec", name, "sleep", "30"])
        try:
            def listed() -> bool:
                out = subprocess.run(["lsns", "-t", "net", "-n", "-o", "NS,NSFS"],
                                     capture_output=True, text=True).stdout
                return f"/run/netns/{name}" in out
            deadline = time.monotonic() + 5
            while not listed() and time.monotonic() < deadline:
                time.sleep(0.05)
            assert listed()
        finally:
            sleeper.kill()
            sleeper.wait()
    assert name not in nl.list_netns()


def test_add_veth_pair_in_place_with_packets(backend, tag):
    from recipes import net
    a, b = f"nsr-{tag}-a", f"nsr-{tag}-b"
    with Runner(backend=backend) as run:
        net.create_netns(run, a)
        net.create_netns(run, b)
        net.add_veth_pair(run, "nsr-va", "nsr-vb", ns=a, peer_ns=b,
                          addr="10.231.0.1/24", peer_addr="10.231.0.2/24")
        assert nl.is_veth_pair(a, "nsr-va", b, "nsr-vb")
        assert nl.link(a, "nsr-va")["addrs"][0] == "10.231.0.1/24"
        assert nl.link(b, "nsr-vb")["up"]
        assert reach.udp_check(a, "10.231.0.1/24", b, "10.231.0.2")
        assert net.check_pair(run, a, "10.231.0.1/24", b, "10.231.0.2/24") is True
        run.undo()
        assert not nl.netns_exists(a) and not nl.netns_exists(b)


def test_check_fails_when_the_link_is_down(backend, tag, monkeypatch):
    """net-veth's reachability check on each backend (shell: TCP through busybox nc;
    native: a UDP datagram and its reply) says False once the link is down."""
    from recipes import net
    a, b = f"nsr-{tag}-a", f"nsr-{tag}-b"
    with Runner(backend=backend) as run:
        net.create_netns(run, a)
        net.create_netns(run, b)
        net.add_veth_pair(run, "nsr-va", "nsr-vb", ns=a, peer_ns=b,
                          addr="10.232.0.1/24", peer_addr="10.232.0.2/24")
        # precondition: the same check succeeds while the link is up (else False proves nothing)
        assert net.check_pair(run, a, "10.232.0.1/24", b, "10.232.0.2/24") is True
        subprocess.run(["ip", "-n", b, "link", "set", "nsr-vb", "down"], check=True)
        for check in ("udp_check", "tcp_check_shell"):   # give up sooner: nothing will come
            monkeypatch.setattr(reach, check, functools.partial(getattr(reach, check), timeout=1.5))
        assert net.check_pair(run, a, "10.232.0.1/24", b, "10.232.0.2/24") is False


def test_the_shell_check_hears_a_token_that_comes_late(tag):
    """busybox nc -l ends its sending half as soon as its stdin ends, and the check's stdin
    may be /dev/null (pytest, cron, CI): the client nc then saw the end and quit before it
    sent its token, and CI once saw 14 of 15 pairs of a line. The listener keeps a pipe on
    its stdin; here the test's fd 0 is /dev/null, and the client's token comes 0.5 s after
    it connected."""
    from recipes import net
    a, b = f"nsr-{tag}-a", f"nsr-{tag}-b"
    with Runner(backend="native") as run:
        net.create_netns(run, a)
        net.create_netns(run, b)
        net.add_veth_pair(run, "nsr-va", "nsr-vb", ns=a, peer_ns=b,
                          addr="10.234.0.1/24", peer_addr="10.234.0.2/24")
        saved, null = os.dup(0), os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        try:
            listener = reach.nc_listen(b, reach.CHECK_PORT)
        finally:
            os.dup2(saved, 0)
            os.close(saved)
            os.close(null)
        def listening() -> bool:      # /proc/net/tcp{,6} inside b: the port in state 0A (LISTEN)
            table = subprocess.run(["ip", "netns", "exec", b, "cat", "/proc/net/tcp",
                                    "/proc/net/tcp6"], capture_output=True, text=True).stdout
            return any(f":{reach.CHECK_PORT:04X} " in ln and ln.split()[3] == "0A"
                       for ln in table.splitlines() if len(ln.split()) > 3)
        deadline = time.monotonic() + 60
        while not listening():
            assert time.monotonic() < deadline, "the listener never listened"
            time.sleep(0.05)
        client = subprocess.Popen(["ip", "netns", "exec", a, "busybox", "nc", "-w", "5",
                                   "10.234.0.2", str(reach.CHECK_PORT)], stdin=subprocess.PIPE)
        try:
            time.sleep(0.5)
            try:
                client.stdin.write(b"nsr-late-token\n")
                client.stdin.close()
            except BrokenPipeError:
                pass                 # the client has quit: the assertion says so
            assert "nsr-late-token" in (reach.nc_received(listener, 5) or "")
        finally:
            client.kill()
            client.wait()


def test_root_end_is_a_leftover_until_undone(backend, tag):
    from recipes import net
    other = f"nsr-{tag}-o"
    root_if = f"nsr-{tag}-r"
    with Runner(backend=backend) as run:
        net.create_netns(run, other)
        net.add_veth_pair(run, root_if, "nsr-peer", ns=None, peer_ns=other)
        assert root_if in os.listdir("/sys/class/net")
        kinds = {(i.kind, i.name) for i in net.leftovers()}
        assert ("link", root_if) in kinds and ("netns", other) in kinds
    assert root_if not in os.listdir("/sys/class/net")
    assert not nl.netns_exists(other)


def test_net_veth_idempotent_conflict_and_delete(backend, tag):
    from recipes import veth
    a, b = f"nsr-{tag}-a", f"nsr-{tag}-b"
    with Runner(backend=backend, keep=True) as run:
        first = veth.veth_create(run, a, b, "10.233.0.1/24", "10.233.0.2/24")
    assert first["changed"] and first["reachable"]
    assert {a, b} <= set(nl.list_netns())
    for ns, peer, addr in ((a, b, "10.233.0.2"), (b, a, "10.233.0.1")):
        # ip netns exec bind-mounts /etc/netns/NS/hosts over /etc/hosts: the peer's name
        # resolves inside to the peer's address
        seen = subprocess.run(["ip", "netns", "exec", ns, "getent", "hosts", peer],
                              capture_output=True, text=True, check=True).stdout.split()
        assert seen == [addr, peer], (ns, seen)
    inode = nl.netns_inode(a)
    with Runner(backend=backend, keep=True) as run:
        again = veth.veth_create(run, a, b, "10.233.0.1/24", "10.233.0.2/24")
    assert again["changed"] is False and again["reachable"]
    assert nl.netns_inode(a) == inode          # nothing was recreated
    with pytest.raises(Conflict, match="other settings"):
        with Runner(backend=backend, keep=True) as run:
            veth.veth_create(run, a, b, "10.233.0.9/24", "10.233.0.2/24")
    assert [x for x in nl.link(a, a)["addrs"] if "." in x] == ["10.233.0.1/24"]  # untouched
    for wrong in ((a, f"nsr-{tag}-z"), (f"nsr-{tag}-z", b), (b, f"nsr-{tag}-z")):
        with pytest.raises(Conflict, match=f"is not a pair: nsrecipes made {a}<->{b}"):
            with Runner(backend=backend, keep=True) as run:
                veth.veth_delete(run, *wrong)
    assert nl.netns_exists(a) and nl.netns_exists(b)
    with Runner(backend=backend, keep=True) as run:
        assert veth.veth_delete(run, a, b)["changed"] is True
    assert not nl.netns_exists(a) and not nl.netns_exists(b)
    assert not os.path.exists(f"/etc/netns/{a}")
    with Runner(backend=backend, keep=True) as run:
        assert veth.veth_delete(run, a, b)["changed"] is False


def test_net_veth_refuses_a_namespace_it_did_not_make(tag):
    from recipes import veth
    foreign = f"nsr-{tag}-f"
    subprocess.run(["ip", "netns", "add", foreign], check=True)
    try:
        proc = cli("net-veth", "--name", foreign, "--peer", f"nsr-{tag}-g")
        assert "not made by nsrecipes" in one_line_error(proc)
        assert not nl.netns_exists(f"nsr-{tag}-g")
        with pytest.raises(Conflict):
            with Runner(backend="native", keep=True) as run:
                veth.veth_delete(run, foreign, f"nsr-{tag}-g")
        assert nl.netns_exists(foreign)
    finally:
        subprocess.run(["ip", "netns", "del", foreign], check=False)


@pytest.mark.userspace
def test_net_veth_cli_twice_then_delete(tag):
    a, b = f"nsr-{tag}-a", f"nsr-{tag}-b"
    args = ["net-veth", "--name", a, "--peer", b, "--addr", "10.234.0.1/24",
            "--peer-addr", "10.234.0.2/24", "--backend", "native"]
    first = cli(*args)
    assert first.returncode == 0, first.stderr
    assert "packets go both ways" in first.stdout
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert a in listed and b in listed
    second = cli(*args)
    assert second.returncode == 0 and "nothing to do" in second.stdout
    clash = cli("net-veth", "--name", a, "--peer", b, "--addr", "10.234.0.7/24",
                "--peer-addr", "10.234.0.2/24", "--backend", "shell")
    assert "other settings" in one_line_error(clash)
    gone = cli("net-veth", "--name", a, "--peer", b, "--delete")
    assert gone.returncode == 0 and "deleted" in gone.stdout
    assert not nl.netns_exists(a)
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
    assert a not in listed and b not in listed          # both ends, seen by ip
    assert not os.path.exists(f"/etc/netns/{a}") and not os.path.exists(f"/etc/netns/{b}")


BAD = [
    (["net-veth", "--name", "nsr-abcdefghijklm"], "limit is 15"),
    (["net-veth", "--name", "nsr/a"], "not allowed"),
    (["net-veth", "--peer", "nsr b"], "not allowed"),
    (["net-veth", "--name", "."], "not allowed"),
    (["net-veth", "--name", ".."], "not allowed"),
    (["net-veth", "--name", ""], "empty"),
    (["net-veth", "--addr", "10.0.0.300/24"], "not an address"),
    (["net-veth", "--peer-addr", "banana"], "not an address"),
    (["net-veth", "--addr", "10.1.0.1/24", "--peer-addr", "10.2.0.1/24"], "different subnets"),
    (["net-topo", "--hosts", "0"], "at least 1"),
    (["net-topo", "--hosts", "-4"], "at least 1"),
    (["net-topo", "--hosts", "100000000"], "out of range"),
    (["net-topo", "--hosts", "many"], "not a number"),
    (["net-topo", "--shape", "blob"], "unknown shape"),
    (["net-topo", "--shape", "ring", "--hosts", "2"], "at least 3"),
    (["net-topo", "--scope", "a/b"], "scope"),
]


def _could_be_mine(names: set[str], args: list[str], scope: str) -> set[str]:
    """New objects this command could have made (other helpers' tests run at the same time)."""
    given = {a for a in args if a.startswith("nsr")} | {"nsr-a", "nsr-b"}
    return {n for n in names if n in given or f"-{scope}-" in n}


@pytest.mark.userspace
@pytest.mark.parametrize("args,words", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_input_one_line_nothing_created(args, words):
    scope = scope_id()
    if args[0] == "net-topo" and "--scope" not in args:
        args = args + ["--scope", scope]
    before = set(nl.list_netns()) | set(os.listdir("/sys/class/net"))
    proc = cli(*args)
    assert words in one_line_error(proc)
    assert proc.returncode == 2
    after = set(nl.list_netns()) | set(os.listdir("/sys/class/net"))
    assert not _could_be_mine(after - before, args, scope)


@pytest.mark.userspace
def test_bad_input_in_the_python_api():
    from recipes import net
    with Runner(backend="native") as run:
        for kwargs in ({"ifname": "x" * 16, "peer_ifname": "y"},
                       {"ifname": "a", "peer_ifname": "b", "addr": "10.0.0.1/33"},
                       {"ifname": "a", "peer_ifname": "b", "ns": ".."}):
            with pytest.raises(InvalidInput):
                net.add_veth_pair(run, **kwargs)
        assert run.undo_stack == []
    # nothing was created: no such link in the root namespace (where ns=None would put it)
    links = set(os.listdir("/sys/class/net"))
    assert not {"a", "b", "y", "x" * 16, "x" * 15} & links, links


@pytest.mark.userspace
def test_explain_changes_nothing():
    before = {n for n in nl.list_netns() if n in ("nsr-x1", "nsr-x2")}
    proc = cli("net-veth", "--name", "nsr-x1", "--peer", "nsr-x2", "--explain")
    assert proc.returncode == 0, proc.stderr
    assert "ip -n nsr-x1 link add name nsr-x1 type veth peer name nsr-x2 netns nsr-x2" in proc.stdout
    assert {n for n in nl.list_netns() if n in ("nsr-x1", "nsr-x2")} == before == set()


@pytest.mark.parametrize("backend_name", ["native", "shell"])
def test_sigkill_half_way_leaves_only_prefixed_objects_and_cleanup_removes_them(
        backend_name, tag, monkeypatch):
    """Kill a big build (process group, as the OOM killer or kill -9 of a session would)
    once some namespaces exist; only nsr objects are left, and the cleanup providers
    (``recipes.ops.cleanup.remove_all`` over net.leftovers(), limited to this run's scope so a
    concurrent test's objects are not touched) remove every one of them."""
    from recipes.ops import cleanup
    from recipes import net
    root_links = set(os.listdir("/sys/class/net"))
    all_before = set(nl.list_netns())
    proc = subprocess.Popen([INVOKE, "net-topo", "--hosts", "600", "--scope", tag,
                             "--backend", backend_name, "--no-etc-hosts"], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while len(_ours(f"nsr-{tag}-")) < 40 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.002)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        time.sleep(0.2)
        made = set(nl.list_netns()) - all_before
        assert made, "the build made nothing before it was killed"
        assert all(n.startswith("nsr") for n in made)
        assert all(n.startswith("nsr") for n in set(os.listdir("/sys/class/net")) - root_links)
        mine = [i for i in net.leftovers() if tag in i.name]
        assert {i.name for i in mine if i.kind == "netns"} >= {n for n in made if tag in n}
        assert any(i.kind == "state" for i in mine)            # the topology record
        monkeypatch.setattr(cleanup, "find", lambda: mine)
        removed, failed = cleanup.remove_all()
        assert not failed and len(removed) == len(mine)
        assert _ours(f"nsr-{tag}-") == []
        assert not [i for i in net.leftovers() if tag in i.name]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.mark.parametrize("backend_opt", ["auto", "shell", "native"])
def test_the_cards_literal_command(backend_opt):
    """`invoke net-veth --name a --peer b`, exactly as the README and the card print it, on
    every backend. ``a`` is a prefix of ip's ``address`` keyword: every generated ip command
    must name its object with ``name``/``dev``. The names carry no prefix, so this test
    checks itself that they are gone (the leak guard looks for ``nsr`` names only)."""
    if {"a", "b"} & set(nl.list_netns()):
        pytest.skip("this machine has its own netns a or b; the test will not touch them")
    try:
        made = cli("net-veth", "--name", "a", "--peer", "b", "--backend", backend_opt)
        assert made.returncode == 0, made.stderr
        assert "a (10.200.0.1/24) <-> b (10.200.0.2/24): packets go both ways" in made.stdout
        again = cli("net-veth", "--name", "a", "--peer", "b", "--backend", backend_opt)
        assert again.returncode == 0 and "nothing to do" in again.stdout, again.stderr
        gone = cli("net-veth", "--name", "a", "--peer", "b", "--delete", "--backend", backend_opt)
        assert gone.returncode == 0, gone.stderr
    finally:
        for ns in {"a", "b"} & set(nl.list_netns()):
            nl.delete_netns(ns)
    assert not {"a", "b"} & set(nl.list_netns())


def test_a_root_link_of_the_same_name_does_not_conflict(backend, tag):
    """A veth end named like a link of the root namespace, going into another namespace.

    Kernels before 6.14 (Debian 12: 6.1) look a new link's name (or ifindex) up in the
    sender's namespace: ``ip link add name X netns X ...`` sent from the root fails there
    with EEXIST when the root has a link X. Steps are sent from the namespace the end goes
    to, so this passes on every kernel (the VM suite runs it on 6.1)."""
    from recipes import net
    root_a, root_b = f"nsr-{tag}-q", f"nsr-{tag}-r"
    subprocess.run(["ip", "link", "add", "name", root_a, "type", "veth", "peer", "name", root_b],
                   check=True)
    try:
        ns_a, ns_b = root_a, f"nsr-{tag}-p"
        with Runner(backend=backend, keep=True) as run:
            net.create_netns(run, ns_a)
            net.create_netns(run, ns_b)
            net.add_veth_pair(run, root_a, root_b, ns=ns_a, peer_ns=ns_b,
                              addr="10.201.0.1/24", peer_addr="10.201.0.2/24")
        links = {ln["name"] for ln in nl.links(ns_a)}
        assert root_a in links, links
        assert os.path.exists(f"/sys/class/net/{root_a}")  # the root's own link is untouched
    finally:
        subprocess.run(["ip", "link", "del", "dev", root_a], check=False)
