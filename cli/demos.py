"""The document's sections as tasks: the namespace demos, net-veth, cgroups and copy-on-write."""
from __future__ import annotations

from cli.common import make_runner, nsr_task, root_demo


# ==== core demos ============================================================================

@nsr_task(help={"draw": "also draw the tree of PID namespaces the demo made into FILE.svg: "
                        "each process with its PID as every level sees it (NSpid); the "
                        "folder must exist; --explain draws nothing"}, lesson="shell")
def pid_demo(c, draw=None, backend=None, explain=False):
    """PID namespace: the child is PID 1 and sees only its own processes; namespaces nest.

    With /proc mounted in a new mount namespace, `echo $$` prints 1 and `ps` lists only the
    child's processes, while the host sees its real PID; a nested PID namespace shows the
    tree: the parent sees the grandchild's processes, the grandchild none of its parent's.
    """
    from recipes import pid
    with make_runner(backend, explain) as run:
        pid.demo(run, draw=draw)


@nsr_task(help={"draw": "also draw the mounts the demo made into FILE.svg: their peer "
                        "groups read from mountinfo (shared:N, master:N) and the arrows a "
                        "mount event propagates along; the folder must exist; --explain "
                        "draws nothing"}, lesson="shell")
def mount_demo(c, draw=None, backend=None, explain=False):
    """mount namespace: the five propagation states, and make-rprivate keeping mounts inside.

    Shared, slave, shared-and-slave, private and unbindable mounts in a scratch tree
    (/tmp/nsr-mount-*) and where mount events propagate; after `mount --make-rprivate /`
    inside, a mount made inside no longer reaches the host. Everything is undone.
    """
    from recipes import mount
    with make_runner(backend, explain) as run:
        mount.demo(run, draw=draw)


@nsr_task(help={"hostname": "hostname set in the namespace that is joined and kept alive "
                            "(default NewNamespace)"}, lesson="step")
def api_demo(c, hostname="NewNamespace", backend=None, explain=False):
    """The four ways to use the namespace API: clone, /proc/PID/ns, setns, unshare.

    clone() a child into new namespaces; compare /proc/PID/ns links (same inode = same
    namespace) and keep a namespace alive with a bind mount after its last process exits;
    setns() into it by pid and by file; unshare() the calling process (a forked child).
    """
    from recipes import api
    with make_runner(backend, explain) as run:
        api.demo(run, hostname=hostname)


@nsr_task(help={"hostname": "the hostname to set inside the new UTS namespace (default NewNamespace)",
                "command": "command to run inside, as one string split on spaces (default: hostname)"},
          lesson="shell")
def uts_demo(c, hostname="NewNamespace", command="hostname", backend=None, explain=False):
    """UTS namespace: a child in a new UTS namespace sets its hostname; the host's is unchanged."""
    root_demo("uts-demo", "uts", backend, explain, hostname=hostname, command=command.split())


@nsr_task(lesson="shell")
def ipc_demo(c, backend=None, explain=False):
    """IPC namespace: a host message queue (ipcmk -Q) is invisible in a new IPC namespace."""
    root_demo("ipc-demo", "ipc", backend, explain)


@nsr_task(help={"uid": "outside uid that uid 0 inside maps to (default 1000 as root, "
                       "your own uid otherwise)",
                "gid": "outside gid that gid 0 inside maps to (default: same as the uid)"},
          lesson="shell")
def user_demo(c, uid=None, gid=None, backend=None, explain=False):
    """User namespace: uid 0 inside maps to an outside uid; root inside, powerless outside.

    Works as root and as an unprivileged user.
    """
    from recipes import user
    with make_runner(backend, explain) as run:
        user.demo(run, uid=uid, gid=gid)


# ==== the two namespaces the document predates ==============================================

@nsr_task(lesson="shell")
def cgroupns_demo(c, backend=None, explain=False):
    """cgroup namespace (beyond the document, Linux 4.6+): inside, /proc/self/cgroup shows /.

    A holder moves into a scratch cgroup nsr-cgns-* on the v2 hierarchy, then unshares its
    cgroup namespace: the host reads 0::/nsrecipes/nsr-cgns-*, a process that joins cgroup
    and namespace 0::/, one that only joins the namespace (nsenter --cgroup) a path with
    ../ -- relative to the namespace's root. The cgroup is removed at the end.
    """
    root_demo("cgroupns-demo", "cgroupns", backend, explain)


@nsr_task(help={"boottime": "CLOCK_BOOTTIME offset in whole SECONDS, 0 to 315360000 (ten "
                            "years): what uptime and /proc/uptime show inside (default 86400, "
                            "one day)",
                "monotonic": "CLOCK_MONOTONIC offset in whole SECONDS, 0 to 315360000 "
                             "(default 3600)"},
          lesson="shell")
def time_demo(c, boottime="86400", monotonic="3600", backend=None, explain=False):
    """time namespace (beyond the document, Linux 5.6+): uptime inside runs ahead.

    unshare --time --monotonic N --boottime N: /proc/PID/timens_offsets shows the offsets,
    /proc/uptime and uptime inside are --boottime seconds ahead of the host's, CLOCK_MONOTONIC
    --monotonic seconds, CLOCK_REALTIME (the wall clock) the same. Refused on older kernels.
    """
    from recipes import timens
    root_demo("time-demo", "timens", backend, explain,
               boottime=timens.check_offset(boottime, "--boottime"),
               monotonic=timens.check_offset(monotonic, "--monotonic"))


# ==== network ===============================================================================

@nsr_task(lesson="shell")
def net_demo(c, backend=None, explain=False):
    """Network namespace: a new network namespace has only lo; shown down, then up."""
    root_demo("net-demo", "net", backend, explain)


@nsr_task(help={"name": "name of the first namespace and of its veth end (default nsr-a; "
                        "at most 15 bytes)",
                "peer": "name of the second namespace and of its veth end (default nsr-b)",
                "addr": "address of the first end, with prefix (default 10.200.0.1/24)",
                "peer_addr": "address of the second end, with prefix (default 10.200.0.2/24)",
                "delete": "remove the two namespaces (and the pair) made by an earlier run",
                "draw": "also draw the two namespaces and the veth pair joining them (names, "
                        "addresses, namespace inodes, as the kernel reports them) into "
                        "FILE.svg; the folder must exist; --explain draws nothing"},
          lesson="shell")
def net_veth(c, name="nsr-a", peer="nsr-b", addr="10.200.0.1/24", peer_addr="10.200.0.2/24",
             delete=False, draw=None, backend=None, explain=False):
    """Two network namespaces joined by a veth pair with addresses, proven by real packets.

    They stay (ip netns list shows them) until --delete. Idempotent: the same run again
    changes nothing; a name that exists otherwise fails with one line and touches nothing.
    """
    from recipes.common import pictures
    from recipes import veth
    from nsutil.errors import InvalidInput, require_root
    if draw:
        if delete:
            raise InvalidInput("--draw with --delete: there is nothing left to draw",
                               hint="draw when making the pair: net-veth --draw FILE.svg")
        pictures.check_path(draw)
    if not explain:
        require_root("net-veth")
    if name != "nsr-a" and peer == "nsr-b":
        print(f"--name {name} without --peer: {'its pair is' if delete else 'paired with'} "
              f"nsr-b, the default peer (--peer NAME chooses another)", flush=True)
    with make_runner(backend, explain, keep=True) as run:
        if delete:
            veth.veth_delete(run, name, peer)
        else:
            made = veth.veth_create(run, name, peer, addr, peer_addr)
            if draw and explain:
                print(f"(--explain: nothing is drawn; a real run draws {draw})")
            elif draw:
                seen = veth.veth_observed(run, name, peer, made["reachable"])
                run.say(f"drew the pair into {pictures.veth(seen, draw)}")


# ==== cgroups and copy-on-write =============================================================

@nsr_task(help={"memory": "memory limit for the OOM part (default 32M)",
                "pids": "pids limit the fork bomb runs into (default 32)",
                "cpus": "CPU quota for the busy loop, in CPUs (default 0.5)",
                "seconds": "how long the busy loop spins (default 1.0)"}, lesson="step")
def cgroup_demo(c, memory="32M", pids="32", cpus="0.5", seconds="1.0", backend=None,
                explain=False):
    """cgroups limit resources: an OOM kill, a fork bomb stopped, a CPU quota measured.

    Three cgroups named nsr-cg-*: a child allocating past the memory limit is killed by the
    OOM killer (memory.oom_control / memory.events count it); a bounded fork bomb stops at
    pids.max; a busy loop gets about quota/period of a CPU. v1, v2 and hybrid hosts. On v2
    without systemd, a controller the cgroup namespace's root does not enable for its
    children is enabled there, as runc does (said on stderr; it stays enabled).
    """
    from nsutil.limits import parse_number
    seconds = parse_number(seconds, "--seconds", kind=float, minimum=0.1, maximum=60,
                           example="1.0")
    root_demo("cgroup-demo", "cgroup", backend, explain, rootless_ok=True,
               memory=memory, pids=pids, cpus=cpus, seconds=seconds)


@nsr_task(help={"size_mb": "size of the big file in the base layer, MiB (default 8)"},
          lesson="step")
def cow_demo(c, size_mb="8", backend=None, explain=False):
    """Copy-on-write with overlayfs: copy-up, whiteouts, and the disk two containers share.

    Two lower layers under /tmp/nsr-cow-*, two overlay mounts over them: a write lands in
    upper and the lower is unchanged, a delete leaves a whiteout (char device 0/0), and the
    disk used by two containers sharing the layers is compared with two full copies.
    """
    from nsutil.limits import parse_number
    root_demo("cow-demo", "cow", backend, explain, rootless_ok=True,
               size_mb=parse_number(size_mb, "--size-mb", minimum=1, maximum=1024, example="8"))

