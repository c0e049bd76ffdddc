"""Simulated machines for the tests of labs across machines (:mod:`recipes.labs.machines.controller`).

Each "machine" is an nsrecipes environment (net, mnt, uts, pid, ipc namespaces) whose mount
namespace has its own tmpfs on /run and on /etc/netns -- so its own /run/netns, state
directory /run/nsrecipes and /etc/netns -- and runs a real OpenSSH server (Debian's
openssh-server, ``/usr/sbin/sshd -f CONFIG``) on its underlay address only, with a host key
and an authorized key generated for the test. An underlay namespace ``nsr-SCOPE-ul`` holds a
bridge joining, by veths, every machine and a controller namespace ``nsr-SCOPE-ctl``, from
which Fabric connects as it would to real servers. Nothing crosses the host's own network
namespace: the controller runs in ``nsr-SCOPE-ctl`` (a subprocess under ``ip netns exec``, or
this thread moved there by :meth:`Cluster.controller`). Removing a machine's environment
kills its sshd (the pid namespace goes) and every namespace built inside it (they hang off
its mount namespace's /run/netns).
"""
from __future__ import annotations

import os
import subprocess
import sys
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Iterator

from helpers import require_tool
from nsutil import netlink as nl
from nsutil.names import scope_id
from recipes.env import Environment

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SSHD = "/usr/sbin/sshd"
SSHD_CONFIG = """ListenAddress {addr}
Port 22
HostKey {dir}/host_key
AuthorizedKeysFile {dir}/id.pub
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PidFile /run/nsr-sshd.pid
MaxStartups 100
Subsystem sftp internal-sftp
"""


def _ip(*args: str, input: str | None = None) -> None:
    subprocess.run(["ip", *args], check=True, input=input, text=True, capture_output=True, timeout=60)


@dataclass
class Cluster:
    """N machines, their underlay and the controller's namespace."""

    scope: str
    dir: str
    names: list[str] = field(default_factory=list)          # m1, m2, ...
    envs: dict[str, Environment] = field(default_factory=dict)

    @property
    def ctl(self) -> str:
        """The controller's network namespace."""
        return f"nsr-{self.scope}-ctl"

    @property
    def ul(self) -> str:
        """The underlay bridge's network namespace."""
        return f"nsr-{self.scope}-ul"

    def addr(self, name: str) -> str:
        """A machine's underlay address."""
        return f"10.250.0.{10 + self.names.index(name) + 1}"

    def machines(self, venv: dict[str, str] | None = None) -> dict[str, dict]:
        """The ``[machines]`` table for this cluster (as ``topology(machines=...)`` takes it)."""
        return {n: {"ssh": f"root@{self.addr(n)}", "underlay": self.addr(n),
                    "identity": f"{self.dir}/id", **({"venv": venv[n]} if venv and n in venv else {})}
                for n in self.names}

    def toml(self, venv: dict[str, str] | None = None) -> str:
        """The same table as TOML text."""
        out = []
        for n, m in self.machines(venv).items():
            out.append(f"[machines.{n}]")
            out += [f'{k} = "{v}"' for k, v in m.items()]
        return "\n".join(out) + "\n"

    def exec(self, name: str, argv: list[str], check: bool = True):
        """Run ``argv`` inside machine ``name`` (its namespaces, its /run)."""
        return self.envs[name].exec(argv, check=check)

    def netns(self, name: str) -> list[str]:
        """The named network namespaces inside machine ``name`` (its /run/netns)."""
        out = self.exec(name, ["ls", "-1", "/run/netns"], check=False).stdout
        return sorted(x for x in out.split() if x)

    def state(self, name: str) -> list[str]:
        """What is under machine ``name``'s state directory /run/nsrecipes (not its own
        bookkeeping: the mark that nsrecipes made it, the record of its private bind)."""
        out = self.exec(name, ["find", "/run/nsrecipes", "-mindepth", "1", "-not", "-name",
                               ".made-by-nsrecipes", "-not", "-name", ".private-bind.json"],
                        check=False).stdout
        return sorted(x for x in out.split() if x)

    def kill_sshd(self, name: str) -> None:
        """Stop machine ``name``'s sshd (by the pid in its pid file, inside its pid namespace)."""
        pid = self.exec(name, ["cat", "/run/nsr-sshd.pid"]).stdout.strip()
        self.exec(name, ["kill", pid])
        self.exec(name, ["sh", "-c", f"while kill -0 {pid} 2>/dev/null; do sleep 0.1; done"])

    def start_sshd(self, name: str) -> None:
        """Start machine ``name``'s sshd (again, after :meth:`kill_sshd`)."""
        _start_sshd(self, name)

    def pids(self, name: str, pattern: str) -> list[str]:
        """Pids (in machine ``name``'s pid namespace) of its processes matching ``pattern``
        (``pgrep -f`` there: only that machine's processes are seen)."""
        return self.exec(name, ["pgrep", "-f", pattern], check=False).stdout.split()

    @contextmanager
    def controller(self) -> Iterator[None]:
        """Move this thread into the controller's namespace (threads it starts follow)."""
        with nl.in_netns(self.ctl):
            yield

    def run_ctl(self, argv: list[str], timeout: float = 1200, **kw) -> subprocess.CompletedProcess:
        """Run ``argv`` in the controller's namespace (``ip netns exec``) from the checkout."""
        return subprocess.run(["ip", "netns", "exec", self.ctl, *argv], cwd=ROOT, text=True,
                              capture_output=True, timeout=timeout, **kw)

    def invoke(self, *args: str, timeout: float = 1200) -> subprocess.CompletedProcess:
        """``invoke ARGS`` as a user would run it on the controller."""
        return self.run_ctl([os.path.join(os.path.dirname(sys.executable), "invoke"), *args],
                            timeout=timeout)


def _keys(directory: str) -> None:
    for name in ("id", "host_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"nsr-{name}",
                        "-f", f"{directory}/{name}"], check=True, timeout=60)


def _underlay(c: Cluster) -> None:
    _ip("netns", "add", c.ul)
    _ip("netns", "add", c.ctl)
    _ip("-n", c.ul, "link", "add", "nsr-br", "type", "bridge")
    _ip("-n", c.ul, "link", "set", "nsr-br", "up")
    ends = [(c.ctl, "10.250.0.1")] + [(c.envs[n].name, c.addr(n)) for n in c.names]
    for i, (ns, addr) in enumerate(ends):
        _ip("-n", c.ul, "link", "add", f"nsr-p{i}", "type", "veth", "peer", "name", "nsr-ul0", "netns", ns)
        _ip("-n", c.ul, "link", "set", f"nsr-p{i}", "master", "nsr-br", "up")
        _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", "nsr-ul0")
        _ip("-n", ns, "link", "set", "nsr-ul0", "up")
        _ip("-n", ns, "link", "set", "lo", "up")


def _machine(c: Cluster, name: str) -> Environment:
    env = Environment.create(f"nsr-{c.scope}-{name}", "net,mnt,uts,pid,ipc", hostname=name)
    c.envs[name] = env
    # the copies of the host's mounts under /run (its /run/netns, /run/nsrecipes) go first:
    # hidden under the new /run they would still be listed in mountinfo at those paths, and
    # nsrecipes there would take the machine's /run/nsrecipes for a mount point it is not
    # (its private bind, made and unmounted there as on any machine, then fails EINVAL)
    mountinfo = env.exec(["cat", "/proc/self/mountinfo"], check=True).stdout.splitlines()
    below = {f.split()[4] for f in mountinfo if f.split()[4].startswith("/run/")}
    for target in sorted(t for t in below if not any(t.startswith(o + "/") for o in below)):
        # lazily: the mounts below it (other tests' netns files, coming and going) go too
        env.exec(["umount", "-l", target], check=True)
    env.mount_tmpfs("/run")
    env.mount_tmpfs("/etc/netns")
    return env


def _start_sshd(c: Cluster, name: str) -> None:
    conf = f"{c.dir}/sshd-{name}.conf"
    with open(conf, "w") as f:
        f.write(SSHD_CONFIG.format(addr=c.addr(name), dir=c.dir))
    c.exec(name, ["mkdir", "-p", "/run/sshd"])
    _unlock_root(c, name)
    _plain_shell_rc(c, name)
    c.exec(name, [SSHD, "-f", conf, "-E", f"{c.dir}/sshd-{name}.log"])


def _unlock_root(c: Cluster, name: str) -> None:
    """sshd without PAM refuses every login, keys too, to an account whose password field
    starts with ``!`` ("User root not allowed because account is locked": so root is in the
    test VM). A real server's root would have a usable entry; here, inside this machine's own
    mount namespace only, a copy of /etc/shadow with root's field ``*`` (no password, not
    locked) is bind-mounted over it."""
    with open("/etc/shadow") as f:
        lines = f.read().splitlines()
    if not any(ln.startswith("root:!") for ln in lines):
        return
    copy = f"{c.dir}/shadow-{name}"
    with open(os.open(copy, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
        f.write("\n".join("root:*:" + ln.split(":", 2)[2] if ln.startswith("root:!") else ln
                          for ln in lines) + "\n")
    c.exec(name, ["mount", "--bind", copy, "/etc/shadow"])


def _plain_shell_rc(c: Cluster, name: str) -> None:
    """sshd runs every command through root's shell, and Debian's bash reads ~/.bashrc then:
    this host's (pyenv init) costs 0.14 s a session, more than the rest of SSH. A machine of
    its own has its own; here, inside this machine's mount namespace only, an empty file is
    bind-mounted over it."""
    rc = os.path.expanduser("~root/.bashrc")
    if not os.path.isfile(rc):
        return
    empty = f"{c.dir}/bashrc-{name}"
    open(empty, "w").close()
    c.exec(name, ["mount", "--bind", empty, rc])


def _drop_lab_records(c: Cluster) -> None:
    """The controller's records of labs on these machines (``net/machines-*.json`` on this
    host, whose machines' key is in this cluster's directory): a test that failed half-way
    leaves none behind."""
    from recipes.labs.machines import controller as across
    from recipes import net
    for plan in across.recorded():
        if any((m.get("identity") or "").startswith(c.dir + "/") for m in plan.machines.values()):
            net.drop_record(across.record_path(plan.scope))


@contextmanager
def cluster(count: int, directory: str) -> Iterator[Cluster]:
    """``count`` machines m1..mN with sshd running (see the module docstring); all removed
    at the end, also on failure."""
    require_tool(SSHD, "openssh-server")
    c = Cluster(scope=scope_id(), dir=str(directory), names=[f"m{i}" for i in range(1, count + 1)])
    os.makedirs("/etc/netns", exist_ok=True)
    with ExitStack() as stack:
        stack.callback(_drop_lab_records, c)
        stack.callback(lambda: [nl.delete_netns(ns) for ns in (c.ul, c.ctl)])
        _keys(c.dir)
        for name in c.names:
            env = _machine(c, name)
            stack.callback(env.remove, missing_ok=True)
        _underlay(c)
        for name in c.names:
            _start_sshd(c, name)
        yield c
