"""An independent look at the host for anything nsrecipes made (used by the leak guard).

It does not use nsrecipes' own discovery code, so a bug there cannot hide a leak. What it
looks at: network namespaces, links in the root namespace, mounts, cgroups, state files,
/etc/netns entries, System V IPC objects, and processes -- forks of the test process, and
processes in namespaces other than the host's.
"""
from __future__ import annotations

import os
import subprocess

NS_KINDS = ("net", "uts", "ipc", "pid", "mnt", "user", "cgroup")


def _lines(argv: list[str]) -> list[str]:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout.splitlines()
    except FileNotFoundError:
        return []


def _ns_of(pid: str) -> tuple[int, ...]:
    out = []
    for kind in NS_KINDS:
        try:
            out.append(os.stat(f"/proc/{pid}/ns/{kind}").st_ino)
        except OSError:
            out.append(0)
    return tuple(out)


def _cmdline(pid: str) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def all_namespaces() -> set[int]:
    """Every namespace inode some process is in right now."""
    seen: set[int] = set()
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            seen.update(_ns_of(pid))
    return seen


#: namespaces that existed when the session started (set by the guard)
KNOWN_NS: set[int] = set()


def processes() -> set[str]:
    """Processes that look like ours: forks of this process, or in namespaces made since
    the session started (``KNOWN_NS``)."""
    me = str(os.getpid())
    my_cmd = _cmdline(me)
    known = KNOWN_NS or set(_ns_of("1"))
    found = set()
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or pid == me:
            continue
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        tail = stat.rsplit(b")", 1)[1].split()
        state, ppid = tail[0], tail[1].decode()
        if ppid == "2" or pid == "2":  # kernel threads
            continue
        if state == b"Z" and ppid != me:
            continue
        cmd = _cmdline(pid)
        ns = _ns_of(pid)
        if cmd == my_cmd or any(i and i not in known for i in ns) or b"nsr" in cmd:
            text = cmd.replace(b"\0", b" ").decode(errors="replace").strip()[:80]
            found.add(f"pid {pid} {text}")
    return found


def snapshot() -> dict[str, set[str]]:
    """Everything that looks like nsrecipes' on the host right now, by kind."""
    snap: dict[str, set[str]] = {}
    snap["netns"] = {ln.split()[0] for ln in _lines(["ip", "netns", "list"]) if "nsr" in ln}
    snap["links"] = {ln.split(":")[1].strip().split("@")[0] for ln in _lines(["ip", "-o", "link", "show"])
                     if "nsr" in ln.split(":")[1]}
    with open("/proc/self/mountinfo") as f:
        snap["mounts"] = {ln.split()[4] for ln in f if "nsr" in ln}
    cg = set()
    for root, dirs, _ in os.walk("/sys/fs/cgroup"):
        depth = root.count("/") - "/sys/fs/cgroup".count("/")
        for d in dirs:
            if "nsr" in d:
                cg.add(os.path.join(root, d))
        dirs[:] = [d for d in dirs if "nsr" not in d] if depth < 6 else []
    snap["cgroups"] = cg
    state = os.environ.get("NSR_STATE_DIR", "/run/nsrecipes")
    snap["state"] = {os.path.join(state, n) for n in os.listdir(state)} if os.path.isdir(state) else set()
    if os.path.isdir(state):
        snap["state"].add(state)
    snap["state"] |= {f"/run/{n}" for n in os.listdir("/run") if n.startswith("nsr") and n != "nsrecipes"}
    snap["etc-netns"] = ({f"/etc/netns/{n}" for n in os.listdir("/etc/netns") if "nsr" in n}
                         if os.path.isdir("/etc/netns") else set())
    snap["tmp"] = {f"/tmp/{n}" for n in os.listdir("/tmp") if n.startswith("nsr")}
    ipc = set()
    for kind in ("msg", "shm", "sem"):
        try:
            with open(f"/proc/sysvipc/{kind}") as f:
                next(f)
                ipc |= {f"{kind} key={ln.split()[0]} id={ln.split()[1]}" for ln in f if ln.strip()}
        except OSError:
            pass
    snap["ipc"] = ipc
    snap["processes"] = processes()
    return snap


def new_since(before: dict[str, set[str]], after: dict[str, set[str]]) -> dict[str, set[str]]:
    """What ``after`` has that ``before`` did not, by kind (empty kinds dropped)."""
    return {k: after[k] - before.get(k, set()) for k in after if after[k] - before.get(k, set())}
