"""Network labs without root, against the real kernel, run by a real unprivileged user (uid
65534, no capabilities; tests/asuser.py): net-topo (a star, a TOML lab with a router, --check,
--show, --status, --down), net-exec, net-link and net-veth, on both backends.

Every lab is owned by a user namespace a holder process keeps; nothing of it is on the host
(/run/netns, /etc/netns, host links): the tests check that, and that nothing of the user's is
left afterwards (records, hosts files, holders). Traffic only between the lab's namespaces.
"""
from __future__ import annotations

import json
import os
import signal
import textwrap

import pytest

from asuser import as_user, home  # noqa: F401
from helpers import cli
from nsutil import netlink as nl
from nsutil import procfs

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the test switches to uid 65534")

LAB = textwrap.dedent("""\
    [hosts.r1]
    router = true
    [hosts.web]
    [hosts.db]
    [[links]]
    a = "web"
    b = "r1"
    rate = "10mbit"
    [[links]]
    a = "db"
    b = "r1"
    """)


def _ok(proc) -> str:
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    return proc.stdout


def _records(home: str) -> dict[str, dict]:
    base = os.path.join(home, "run", "nsrecipes", "net")
    out = {}
    for entry in sorted(os.listdir(base)) if os.path.isdir(base) else []:
        if entry.endswith(".json"):
            with open(os.path.join(base, entry)) as f:
                out[entry] = json.load(f)
    return out


@pytest.fixture
def labs(home):  # noqa: F811
    """The user's home; afterwards every holder its records name is killed (a failed test
    leaves nothing either), and nothing of the user's may be left in its runtime dir."""
    holders: list[dict] = []
    yield home, holders
    for rec in _records(home).values():
        holders.append(rec.get("holder") or {})
    left = [h for h in holders if procfs.same_process(h)]
    for h in left:
        os.kill(h["pid"], signal.SIGKILL)
    assert not left, f"holders left running: {left}"
    assert not os.path.exists(os.path.join(home, "run", "nsrecipes")), \
        os.listdir(os.path.join(home, "run", "nsrecipes"))


def _on_host(scope: str) -> list[str]:
    """What of a lab with ``scope`` the host has: netns, /etc/netns entries, links."""
    found = [n for n in nl.list_netns() if f"-{scope}-" in n]
    found += [n for n in os.listdir("/sys/class/net") if f"-{scope}-" in n]
    if os.path.isdir("/etc/netns"):
        found += [n for n in os.listdir("/etc/netns") if f"-{scope}-" in n]
    return found


def test_a_users_routed_lab_by_name_impaired_and_down(backend, labs, tag):
    """A TOML lab with a router, built by the user: --check proves every pair along its
    shortest path (web -> db through r1: 2 hops); net-exec reaches db by name (the lab's
    hosts file is /etc/hosts in its mount namespace, the names are pinned there, not on the
    host); net-link impairs a link; --show sees every namespace up; --down leaves nothing."""
    home, holders = labs
    env = {"NSR_BACKEND": backend}
    lab = os.path.join(home, "lab.toml")      # the user's own file, in its home
    with open(lab, "w") as f:
        f.write(LAB)
    os.chown(lab, 65534, 65534)
    out = _ok(as_user(home, "net-topo", "--file", str(lab), "--scope", tag, "--check", env=env))
    assert "web -> db: 2 hops" in out and "3/3 pairs" in out, out
    holders.append(_records(home)[f"topo-{tag}.json"]["holder"])
    assert holders[0]["ready"] and procfs.same_process(holders[0])
    assert not _on_host(tag)
    out = _ok(as_user(home, "net-exec", "web", "--", "sh", "-c",
                      "ping -c1 -W5 db >/dev/null && echo PONG; ip netns list; id -u", env=env))
    assert "PONG" in out and f"nsr-{tag}-db" in out and out.split()[-1] == "0", out
    out = _ok(as_user(home, "net-link", "--scope", tag, "--link", "web:r1", "--rate", "5mbit",
                      env=env))
    assert "web -> r1: 5mbit" in out, out
    shown = json.loads(_ok(as_user(home, "net-topo", "--show", "--json", "--scope", tag,
                                   env=env)))
    nodes = shown["topologies"][0]["nodes"]
    assert {n["name"] for n in nodes if n["up"]} == {"web", "r1", "db"}, nodes
    _ok(as_user(home, "net-topo", "--down", "--scope", tag, env=env))
    assert not procfs.same_process(holders[0])


def test_a_users_star_veth_pair_and_cleanup(labs, tag):
    """A star and a net-veth pair of the user's, each a lab of its own; the star's holder
    dies: --status says it is dead, root's cleanup does not see it (nor the live pair), the
    user's cleanup removes the dead one and keeps the pair; --delete removes the pair."""
    home, holders = labs
    a, b = f"nsr-{tag}a", f"nsr-{tag}b"
    out = _ok(as_user(home, "net-topo", "--hosts", "3", "--scope", tag, "--check",
                      env={"NSR_BACKEND": "native"}))
    assert "3/3 pairs" in out, out
    out = _ok(as_user(home, "net-veth", "--name", a, "--peer", b, "--backend", "native"))
    assert "packets go both ways" in out, out
    recs = _records(home)
    star, pair = recs[f"topo-{tag}.json"]["holder"], recs[f"veth-{a}.json"]["holder"]
    holders += [star, pair]
    out = _ok(as_user(home, "net-exec", a, "--", "ping", "-c1", "-W5", b))
    assert f"from {b} (10.200.0.2)" in out, out
    assert not _on_host(tag) and a not in nl.list_netns()
    os.kill(star["pid"], signal.SIGKILL)            # the star's holder dies
    out = _ok(as_user(home, "net-topo", "--status"))
    assert f"{tag}  star  3 hosts" in out and "dead: its holder is gone" in out, out
    seen = _ok(cli("cleanup", "--dry-run"))          # root's: the user's labs are not its
    assert home not in seen and tag not in seen, seen
    out = as_user(home, "cleanup")
    assert f"removing state {home}/run/nsrecipes/net/topo-{tag}.json" in out.stdout, out.stdout
    assert f"keeping net-veth {a}<->{b}: holder {pair['pid']} runs" in out.stdout, out.stdout
    assert list(_records(home)) == [f"veth-{a}.json"]
    out = _ok(as_user(home, "net-veth", "--name", a, "--peer", b, "--delete"))
    assert f"deleted {a} and {b}" in out and not procfs.same_process(pair)


def test_a_lab_where_the_host_has_no_run_netns(labs, tag):
    """A fresh host has no /run/netns (ip makes it at its first netns) and a user may not
    make one: the lab mounts a tmpfs on /run inside its own mount namespace, with the host's
    entries bound back. The host here has one, so the test hides /run in a mount namespace
    of its own (a tmpfs with only lock/ in it); hosts still reach each other by name."""
    import subprocess
    from asuser import user_env
    from conftest import unprivileged_argv
    from helpers import INVOKE, ROOT
    home, holders = labs
    script = (f"{INVOKE} net-topo --hosts 2 --scope {tag} && "
              f"{INVOKE} net-exec h1 -- sh -c 'ping -c1 -W5 h2 >/dev/null && echo PONG; ls /run' && "
              f"{INVOKE} net-topo --down --scope {tag}")
    hide = ("mount --make-rprivate / && mount -t tmpfs -o mode=0755 nsr-no-run /run && "
            "mkdir /run/lock && exec \"$@\"")
    proc = subprocess.run(["unshare", "--mount", "sh", "-c", hide, "sh",
                           *unprivileged_argv(["sh", "-c", script])], cwd=ROOT,
                          env=user_env(home, NSR_BACKEND="native"), capture_output=True,
                          text=True, timeout=300)
    out = _ok(proc)
    assert "PONG" in out and "\nlock\nnetns\n" in out, out
    assert not os.path.exists("/run/nsr-no-run") and not _on_host(tag)
