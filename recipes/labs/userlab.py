"""A lab without root: one user namespace owns all of it, and a holder process keeps it.

Without root, ``net-topo`` and ``net-veth`` can neither name namespaces under the host's
/run/netns (root's) nor write /etc/netns. So a lab starts with a *holder*::

    unshare --user --map-root-user --mount --net -- sleep infinity

whose user namespace (this user mapped to root) owns a mount namespace and a network
namespace of the lab's own. The run joins them (``nsenter -t PID --user --mount --net
--preserve-credentials``) and *pins* the lab's names inside that mount namespace, where the
user is root and nothing reaches the host:

* a tmpfs on /run/netns: ``ip netns``, ``ip -n`` and ``ip netns exec`` work as with root and
  see only the lab (where the host has no /run/netns, a tmpfs on /run with the host's entries
  bound back, and /run/netns in it);
* a tmpfs over /etc/netns when the host has one (root's hosts files stay out of the lab);
* the lab's hosts file (``net/KIND-NAME.hosts`` in the user's state directory) bound over
  /etc/hosts: hosts reach each other by name.

Then the same steps as root's run there. The holder's own network namespace is the lab's
"root" one (what ``ip netns add`` returns to). Nothing is made on the host, so killing the
holder is the teardown: its namespaces, and every netns pinned in them, go with it. Later
commands (``net-exec``, ``net-link``, ``--check``) find the holder in the lab's record and
join it first; ``--down``, ``--status`` and ``cleanup`` need not. The record's ``holder`` is
``{"pid", "start", "ready"}``; ``ready`` once the lab is built (``cleanup`` removes a lab
whose holder died, or whose creator died before it was ready).
"""
from __future__ import annotations

import os
from typing import Any, Callable

from nsutil import procfs, process, rootless, state
from nsutil import syscalls as sc
from nsutil.backend import Placeholder, Runner, Step
from nsutil.errors import CommandError, NotFound, NsrError, SyscallError
from nsutil.nstypes import ns_inode

from recipes.common.leftover import Leftover

NETNS_DIR = "/run/netns"
ETC_NETNS = "/etc/netns"
#: the namespaces a lab's holder makes, in join order after its user namespace
LAB_TYPES = ("user", "net", "mnt")
#: the first line of a lab's hosts file
HOSTS_MARK = ("# written by nsrecipes for a lab without root: bound over /etc/hosts in its "
              "mount namespace")


def hosts_path(record_path: str) -> str:
    """The lab's hosts file beside its record (``net/topo-SCOPE.json`` -> ``.hosts``)."""
    return record_path[:-len(".json")] + ".hosts" if record_path.endswith(".json") \
        else record_path + ".hosts"


def holder_argv() -> list[str]:
    """``unshare --user --map-root-user --mount --net -- sleep infinity``."""
    return ["unshare", *rootless.UNSHARE_OPTIONS, "--mount", "--net", "--", "sleep", "infinity"]


def join_argv(pid: Any) -> list[str]:
    """``nsenter -t PID --user --mount --net --preserve-credentials``: into a lab's holder."""
    return ["nsenter", "-t", pid, "--user", "--mount", "--net", "--preserve-credentials"]


# --- starting a lab -----------------------------------------------------------------------------

def _native_holder(name: str) -> process.Holder:
    """The native ``unshare --user --map-root-user --mount --net``: the child maps this user
    to root in its new user namespace itself, then makes / private as ``unshare --mount``."""
    uid, gid = os.geteuid(), os.getegid()

    def setup() -> None:
        from nsutil import idmap
        idmap.write_uid_map("self", [idmap.IdMap(0, uid, 1)])
        idmap.deny_setgroups("self")
        idmap.write_gid_map("self", [idmap.IdMap(0, gid, 1)])
        sc.make_propagation("/", "private", recursive=True)

    return process.spawn_holder(sc.CLONE_NEWUSER | sc.CLONE_NEWNS | sc.CLONE_NEWNET,
                                setup=setup, detach=True, quiet=True, name=name)


def _shell_holder(argv: list[str]) -> process.Holder:
    """Start ``unshare ... sleep infinity`` in a session of its own, its stdio on /dev/null
    (a pipe our stdout may be would otherwise stay open as long as the lab); once its user
    namespace is not ours, it holds the lab. What it said on stderr names a failure."""
    import subprocess
    import tempfile
    mine = ns_inode("self", "user")
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=err, start_new_session=True)

        def ready() -> bool:
            if proc.poll() is not None:
                err.seek(0)
                raise CommandError(argv, proc.returncode, err.read().decode(errors="replace"))
            try:
                return ns_inode(proc.pid, "user") != mine
            except (NsrError, OSError):
                return False

        try:
            process.wait_for(ready, 10, f"`{' '.join(argv)}` to start")
        except BaseException:
            process.kill_and_reap(proc.pid, proc.pid)
            raise
    return process.Holder(proc.pid, proc.pid, sc.CLONE_NEWUSER | sc.CLONE_NEWNS | sc.CLONE_NEWNET)


def write_hosts(run: Runner, path: str, entries: list[tuple[str, str]]) -> None:
    """Step: the lab's hosts file (``ADDR NAMES`` lines after localhost), bound over
    /etc/hosts in the lab by :func:`pin`; removed with the lab."""
    lines = [HOSTS_MARK, "127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
    lines += [f"{addr}\t{names}" for addr, names in entries]

    def write() -> None:
        state.state_dir("net")
        try:
            with open(path, "w") as f:
                f.write("\n".join(lines) + "\n")
        except OSError as exc:
            raise SyscallError.from_oserror(f"write({path!r})", exc) from None

    run.run(Step(f"write the lab's hosts file ({len(entries)} names)", native=write,
                 shell=lambda _a: write(), display=f"printf 'ADDR HOST\\n...' > {path}",
                 undo=Step(f"remove {path}", native=lambda: sc.remove_if_present(path),
                           shell=lambda _a: sc.remove_if_present(path), display=f"rm -f {path}")))


def start(run: Runner, record: str, name: str) -> dict:
    """Step: start the lab's holder (a user namespace owning a mount and a network namespace)
    and write it into the lab's ``record``; undo: kill it. Returns its ``holder`` entry."""
    holder = run.run(Step(
        f"start the lab's holder: a user namespace (uid {rootless.outside_uid()} is root in "
        "it) that owns a mount and a network namespace of the lab's own",
        argv=holder_argv(), native=lambda: _native_holder(name),
        shell=_shell_holder,
        placeholder=process.Holder(Placeholder("$PID"), Placeholder("$PID"), 0)))
    entry = {"pid": holder.pid, "start": None, "ready": False}
    run.defer(stop_step(record, entry))
    if run.explain:
        return entry
    entry["start"] = procfs.start_time(holder.pid)
    _update_record(record, entry)
    return entry


def _update_record(record: str, entry: dict) -> None:
    """Rewrite ``record`` with ``entry`` as its holder."""
    from recipes import net
    rec = state.read_json(record)
    if isinstance(rec, dict):
        net.save_record(record, {**rec, "holder": entry})


def mark_ready(run: Runner, record: str, entry: dict) -> None:
    """The lab is built: its record says so (``cleanup`` keeps it while the holder runs)."""
    if run.explain:
        return
    entry["ready"] = True
    _update_record(record, entry)


def join(run: Runner, entry: dict) -> None:
    """Step: this process joins the holder's user, network and mount namespaces; every step
    after this one runs inside the lab (as root there). Once per process: a lab's
    namespaces cannot be left for the host's again without root."""
    def native() -> None:
        if not procfs.same_process(entry):
            raise NotFound(f"the lab's holder (pid {entry.get('pid')}) is gone",
                           hint="`invoke cleanup` removes what is left of that lab")
        os.environ.setdefault(rootless.ROOTLESS_ENV, str(rootless.outside_uid()))
        os.environ.setdefault("NSR_ROOTLESS_GID", str(rootless.outside_gid()))
        cwd = os.getcwd()
        process.enter_all(entry["pid"], LAB_TYPES)
        try:
            os.chdir(cwd)       # the same path in the lab's mount namespace (a copy of ours)
        except OSError:
            pass                # not there: stay in / as nsenter does

    run.run(Step(f"join the lab's user, network and mount namespaces (holder pid "
                 f"{entry.get('pid')}): the steps below run there, as root of the lab",
                 argv=join_argv(entry.get("pid")), native=native, shell=lambda _a: native()))


def enter(run: Runner, entry: dict | None, what: str) -> None:
    """A later command (``net-exec``, ``net-link``) joins the lab ``what`` through its
    holder ``entry`` (see :func:`join`); a lab without a live holder is one line."""
    if run.explain:
        return
    if not entry or not procfs.same_process(entry):
        raise NotFound(f"{what} is dead: its holder (pid {(entry or {}).get('pid')}) is gone",
                       hint="`invoke cleanup` removes it; then build it again")
    join(run, entry)


def start_lab(run: Runner, record: str, hosts: list[tuple[str, str]] | None, name: str) -> dict:
    """Steps: the lab's hosts file (``hosts``: (address, names); None: none), its holder
    (written into ``record``), this process joined to it, the names pinned inside.
    Returns the holder's entry."""
    hosts_file = None
    if hosts is not None:
        hosts_file = hosts_path(record)
        write_hosts(run, hosts_file, hosts)
    entry = start(run, record, name)
    join(run, entry)
    pin(run, hosts_file)
    return entry


def enter_lab_of(run: Runner, ns: str) -> None:
    """Without root: join the lab (topology or net-veth pair) whose record names ``ns``."""
    from recipes import net
    if not run.rootless or run.explain:
        return
    for rec in net.records():
        if ns in set(rec.get("netns", [])) | {rec.get("name"), rec.get("peer")}:
            enter(run, rec.get("holder"), f"the lab of {ns}")
            return
    raise NotFound(f"no lab of yours has a namespace {ns}", hint="see invoke net-topo --status")


# --- pinning the names inside the lab -----------------------------------------------------------

def _mount_tmpfs(target: str, name: str, shared: bool = False) -> None:
    sc.mount(name, target, "tmpfs", sc.MS_NOSUID | sc.MS_NODEV, "mode=0755")
    if shared:
        sc.make_propagation(target, "shared")


def _rebuild_run() -> None:
    """/run has no netns directory and the user may not make one there: a tmpfs on /run
    with every entry of the host's /run bound back (read through an fd to the old one),
    and /run/netns in it. Only inside the lab's mount namespace."""
    old = os.open("/run", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        entries = list(os.scandir(f"/proc/self/fd/{old}"))
        _mount_tmpfs("/run", "nsr-run")
        for entry in entries:
            target = os.path.join("/run", entry.name)
            if entry.is_symlink():
                os.symlink(os.readlink(entry.path), target)
                continue
            if entry.is_dir(follow_symlinks=False):
                os.mkdir(target, 0o755)
            else:
                os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644))
            try:
                sc.mount(entry.path, target, None, sc.MS_BIND | sc.MS_REC)
            except SyscallError:
                sc.remove_if_present(target, os.rmdir if entry.is_dir(follow_symlinks=False)
                                     else os.unlink)
        os.mkdir(NETNS_DIR, 0o755)
    finally:
        os.close(old)


def pin(run: Runner, hosts_file: str | None) -> None:
    """Steps, inside the lab's mount namespace (after :func:`join`): a tmpfs on /run/netns
    for the lab's names, root's /etc/netns hidden, the lab's hosts file over /etc/hosts."""
    if not run.explain and not os.path.isdir(NETNS_DIR):
        run.run(Step("the host has no /run/netns and the user may not make one: a tmpfs on "
                     "/run inside the lab's mount namespace, the host's entries bound back, "
                     "and /run/netns in it", native=_rebuild_run, shell=lambda _a: _rebuild_run(),
                     display="mount -t tmpfs nsr-run /run; mount --rbind OLD/ENTRY /run/ENTRY "
                             "# each; mkdir /run/netns"))
    run.run(Step("a tmpfs on /run/netns inside the lab's mount namespace: the lab's names "
                 "go there (the host's stay root's)",
                 argv=["mount", "-t", "tmpfs", "-o", "mode=0755,nosuid,nodev", "nsr-netns",
                       NETNS_DIR],
                 native=lambda: _mount_tmpfs(NETNS_DIR, "nsr-netns")))
    run.run(Step("make /run/netns a shared mount, as ip netns add does",
                 argv=["mount", "--make-shared", NETNS_DIR],
                 native=lambda: sc.make_propagation(NETNS_DIR, "shared")))
    if run.explain or os.path.isdir(ETC_NETNS):
        run.run(Step("an empty tmpfs over /etc/netns: root's per-namespace files stay out",
                     argv=["mount", "-t", "tmpfs", "-o", "mode=0755,nosuid,nodev",
                           "nsr-etc-netns", ETC_NETNS],
                     native=lambda: _mount_tmpfs(ETC_NETNS, "nsr-etc-netns")))
    if hosts_file:
        run.run(Step("bind the lab's hosts file over /etc/hosts (hosts reach each other "
                     "by name)", argv=["mount", "--bind", hosts_file, "/etc/hosts"],
                     native=lambda: sc.mount(hosts_file, "/etc/hosts", None, sc.MS_BIND)))


# --- after: looking, stopping, cleaning up ------------------------------------------------------

def netns_present(entry: dict | None) -> set[str]:
    """The names pinned in a lab now, as its holder sees them (/proc/PID/root/run/netns):
    no need to join; empty when the holder is gone."""
    if not entry or not procfs.same_process(entry):
        return set()
    try:
        return set(os.listdir(f"/proc/{entry['pid']}/root{NETNS_DIR}"))
    except OSError:
        return set()


def alive(entry: dict | None) -> bool:
    """True while the lab's holder runs."""
    return bool(entry) and procfs.same_process(entry)


def _kill(entry: dict) -> None:
    if procfs.same_process(entry):
        process.kill_and_reap(entry["pid"])


def stop_step(record: str, entry: dict) -> Step:
    """The step that ends a lab: kill its holder (every namespace of the lab goes with it)
    and remove its hosts file. A holder already gone is fine."""
    hosts = hosts_path(record)

    def stop(_argv: Any = None) -> None:
        _kill(entry)
        sc.remove_if_present(hosts)

    return Step(f"stop the lab's holder (pid {entry.get('pid')}): its user namespace and "
                "every namespace pinned in it go", argv=["kill", "-KILL", entry.get("pid")],
                native=stop, shell=stop)


def teardown_step(record: str, what: str, count: int,
                  holder: Callable[[], dict | None]) -> Step:
    """The step that tears a lab down without root: kill its holder (``holder()``, asked
    when the step runs: there is none yet while the lab is being built), which takes its
    user namespace and the ``count`` namespaces pinned in it along; remove its hosts file
    and its record."""
    from recipes import net

    def native() -> None:
        entry = holder()
        if entry is not None:
            _kill(entry)
        sc.remove_if_present(hosts_path(record))
        net.drop_record(record)

    pid = (holder() or {}).get("pid", "$PID")
    return Step(f"tear down {what}: stop the lab's holder; its user namespace and {count} "
                "namespaces go with it", argv=["kill", "-KILL", pid],
                native=native, shell=lambda _a: native())


def why_kept(rec: dict) -> str | None:
    """Why ``cleanup`` keeps a rootless lab's record: its holder runs and the lab was
    built, or its creator still builds it; None: dead or orphaned."""
    entry = rec.get("holder") or {}
    if procfs.same_process(rec.get("creator")):
        return f"being built by pid {rec['creator']['pid']}"
    if entry.get("ready") and procfs.same_process(entry):
        return f"holder {entry['pid']} runs"
    return None


def claims(path: str, rec: dict) -> set[tuple[str, str]]:
    """What a kept rootless lab owns among the leftovers: its record, hosts file, holder."""
    out = {("state", path), ("state", hosts_path(path))}
    if rec.get("holder"):
        out.add(("holder", holder_label(rec["holder"])))
    return out


def holder_label(entry: dict) -> str:
    """How ``cleanup`` names a lab's holder."""
    return f"pid {entry.get('pid')} (a lab's user namespace)"


def leftovers() -> list[Leftover]:
    """The holders of this user's labs that still run (``cleanup`` kills those whose lab is
    dead or was never finished; see :func:`why_kept`). Root's labs have none."""
    from recipes import net
    found = []
    for rec in net.records():
        entry = rec.get("holder")
        if isinstance(entry, dict) and procfs.same_process(entry):
            found.append(Leftover("holder", holder_label(entry), lambda e=entry: _kill(e)))
    return found
