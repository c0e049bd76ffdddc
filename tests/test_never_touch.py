"""nsrecipes never touches what it did not make: a mount of the user's on the state directory,
its propagation, its directory and its files; a hosts file of the user's under /etc/netns.

Everything runs through the real CLI inside the sandbox of :mod:`sandboxkit` (a private mount
and network namespace of the test's own), so the user's mount the test puts on the state
directory -- a tmpfs with a file in it, shared or private -- is a real mount on the real
kernel that the host never sees, and ``cleanup --all`` there sees only this test's objects.
"""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys

from typing import Callable, Iterator

import pytest

from helpers import ROOT
from nsutil import mountinfo, process
from nsutil import syscalls as sc
from nsutil.names import scope_id
from sandboxkit import Sandbox, sandbox  # noqa: F401 (a fixture)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")

PRECIOUS = "the user's own data\n"


def _ok(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def _users_mount(box: Sandbox, target: str, propagation: str) -> dict:
    """The user's tmpfs on ``target`` inside the sandbox, with a file in it."""
    box.run("mkdir", "-p", target)
    box.run("mount", "-t", "tmpfs", "-o", "mode=755", "nsr-users-own", target)
    box.run("mount", f"--make-{propagation}", target)
    with open(box.path(f"{target}/keep"), "w") as f:
        f.write(PRECIOUS)
    return _look(box, target)


def _look(box: Sandbox, target: str) -> dict:
    """What the sandbox shows on ``target``: the mounts stacked there (source, propagation)
    and below it, and the entries in it."""
    mounts = {m.mount_id: m for m in mountinfo.read(box.holder.pid)}
    top = mounts.get(mountinfo.mount_id_of(box.path(target)))     # resolved in the sandbox
    stack = []
    while top is not None and top.mount_point == target:         # down the stack on target
        stack.insert(0, top)
        top = mounts.get(top.parent_id)
    shown = {m.mount_id for m in stack}
    return {"on": [(m.source, m.fstype, m.propagation) for m in stack],
            "below": sorted(m.mount_point for m in mounts.values() if m.parent_id in shown
                            and m.mount_point.startswith(target + "/")),
            "entries": sorted(os.listdir(box.path(target)))}


@pytest.mark.parametrize("where,propagation", [("NSR_STATE_DIR", "shared"),
                                               ("default", "private")])
def test_a_mount_of_the_users_on_the_state_directory_survives_everything(
        sandbox, backend: str, where: str, propagation: str) -> None:  # noqa: F811
    """A tmpfs with a file at the state directory (``NSR_STATE_DIR``, or the default
    /run/nsrecipes on a /run of the sandbox's own) keeps its propagation, its directory and
    its file through env-create/env-rm, net-topo up and down, net-veth and its --delete,
    container-run, cleanup and cleanup --all; and nothing of nsrecipes' own is left there.
    The sandbox's private tmpfs on /run/netns stays private too (``ip netns add`` would make
    it shared: the shell backend names namespaces natively there)."""
    box, t = sandbox, scope_id()
    if where == "default":
        box.run("mount", "-t", "tmpfs", "nsr-run", "/run")      # a /run of the sandbox's own
        box.run("mkdir", "/run/netns")
        target, env = "/run/nsrecipes", {"NSR_STATE_DIR": None}
    else:
        target, env = "/tmp/nsr-mine", {"NSR_STATE_DIR": "/tmp/nsr-mine"}
    env["NSR_BACKEND"] = backend
    before = _users_mount(box, target, propagation)
    assert before == {"on": [("nsr-users-own", "tmpfs", propagation)], "below": [],
                      "entries": ["keep"]}

    netns_dir = _look(box, "/run/netns")["on"]   # the sandbox's own private tmpfs on top, or none
    assert (netns_dir[-1:] if where != "default" else netns_dir) == \
        ([] if where == "default" else [("nsr-sandbox", "tmpfs", "private")])

    def unchanged(after: str) -> None:
        now = _look(box, target)
        assert now == before, f"after {after}: {now} (was {before})"
        if netns_dir:     # a mount of someone else's on /run/netns keeps its propagation too
            assert _look(box, "/run/netns")["on"] == netns_dir, after
        with open(box.path(f"{target}/keep")) as f:
            assert f.read() == PRECIOUS, after

    dry = _ok(box.cli("cleanup", "--all", "--dry-run", env=env))
    assert dry.strip() == "nothing to clean up", dry
    x, y = f"nsr-{t}x", f"nsr-{t}y"
    _ok(box.cli("env-create", x, "--ns", "uts,net,mnt", env=env))
    on = _look(box, target)["on"]
    assert on[0] == before["on"][0] and len(on) >= 2, on     # our bind on top of theirs
    assert on[-1][2] == "private"                            # ours is private ...
    _ok(box.cli("env-rm", x, env=env))
    unchanged("env-create, env-rm")                          # ... and theirs is as it was

    _ok(box.cli("net-topo", "--scope", t, "--hosts", "2", env=env))
    _ok(box.cli("net-topo", "--scope", t, "--down", env=env))
    unchanged("net-topo, --down")

    a, b = f"nsr-{t}a", f"nsr-{t}b"
    _ok(box.cli("net-veth", "--name", a, "--peer", b, env=env))
    _ok(box.cli("net-veth", "--name", a, "--peer", b, "--delete", env=env))
    unchanged("net-veth, --delete")

    _ok(box.cli("container-run", "--", "true", env=env))
    unchanged("container-run")

    _ok(box.cli("env-create", y, "--ns", "uts,mnt", env=env))
    kept = _ok(box.cli("cleanup", env=env))
    assert y in kept and os.path.exists(box.path(f"{target}/{y}/env.json")), kept
    _ok(box.cli("cleanup", "--all", env=env))
    unchanged("cleanup, cleanup --all")


def test_a_hosts_file_of_the_users_under_etc_netns_survives_net_veth(sandbox,  # noqa: F811
                                                                      backend: str) -> None:
    """net-veth and its --delete leave /etc/netns/A/hosts alone when it is the user's (and
    say so), write and remove their own for B, directory and all; cleanup --all too."""
    box, t = sandbox, scope_id()
    a, b = f"nsr-{t}a", f"nsr-{t}b"
    mine = "10.9.9.9\tthe-users-own-host\n"
    os.makedirs(box.path(f"/etc/netns/{a}"))
    with open(box.path(f"/etc/netns/{a}/hosts"), "w") as f:
        f.write(mine)
    env = {"NSR_BACKEND": backend}
    made = _ok(box.cli("net-veth", "--name", a, "--peer", b, env=env))
    assert f"kept /etc/netns/{a}/hosts as it is (not nsrecipes')" in made, made
    with open(box.path(f"/etc/netns/{b}/hosts")) as f:
        ours = f.read()
    assert ours.startswith("# written by nsrecipes") and a in ours, ours
    _ok(box.cli("net-veth", "--name", a, "--peer", b, "--delete", env=env))
    assert not os.path.exists(box.path(f"/etc/netns/{b}"))
    _ok(box.cli("net-veth", "--name", a, "--peer", b, env=env))
    _ok(box.cli("cleanup", "--all", env=env))
    assert not os.path.exists(box.path(f"/etc/netns/{b}"))
    with open(box.path(f"/etc/netns/{a}/hosts")) as f:
        assert f.read() == mine
    assert sorted(os.listdir(box.path("/etc/netns"))) == [a]


def test_a_recorded_mount_is_told_from_another_on_the_same_point(tmp_path) -> None:
    """The record of a mount names it by mount ID, parent ID, mount point and root (and the
    unique ID where the kernel has one): the recorded mount is recognised, and a mount made
    on the same point after it went -- a bind of another directory, or a tmpfs -- is not."""
    point, other = str(tmp_path / "point"), str(tmp_path / "other")
    os.mkdir(point)
    os.mkdir(other)

    def in_a_mount_namespace() -> list[bool]:
        sc.unshare(sc.CLONE_NEWNS)
        sc.make_propagation("/", "private", recursive=True)   # nothing reaches the host
        seen = [mountinfo.mount_record(point) is None]
        sc.mount(point, point, None, sc.MS_BIND)               # "ours", as private_base does
        record = mountinfo.mount_record(point)
        seen.append(mountinfo.is_recorded(point, record))
        sc.umount(point)
        seen.append(mountinfo.is_recorded(point, record))      # gone: not ours
        sc.mount(other, point, None, sc.MS_BIND)               # someone else's, same point
        seen.append(mountinfo.is_recorded(point, record))
        sc.mount("nsr-theirs", point, "tmpfs", 0, None)        # and one more on top
        seen.append(mountinfo.is_recorded(point, record))
        return seen

    assert process.fork_call(in_a_mount_namespace) == [True, True, False, False, False]


def test_mountinfo_paths_with_a_space_and_non_ascii_are_read_as_they_are() -> None:
    """One parser: octal escapes (``\\040`` for a space) decoded, and a non-ASCII path kept
    as UTF-8 even on a line that also holds an escape."""
    line = ("99 23 0:55 / /tmp/nsr\\040caf\u00e9 rw,relatime shared:7 master:3 - tmpfs "
            "my\\040src rw\n").encode()
    m = mountinfo.parse_line(line)
    assert (m.mount_point, m.source, m.propagation, m.tag("shared"), m.tag("master")) == \
        ("/tmp/nsr caf\u00e9", "my src", "shared", 7, 3)


def test_a_ctrl_c_between_the_bind_and_its_record_leaves_no_bind(tmp_path) -> None:
    """A Ctrl-C that lands after the state directory was bound on itself but before the bind's
    record is renamed into place must not leave a bind nobody owns (no later run would ever
    unmount it: it is in no record). Mocked: only the moment of the Ctrl-C -- a signal cannot
    be timed from outside to land between the write and the rename, so ``os.replace`` raises
    the KeyboardInterrupt Python's SIGINT handler would raise there."""
    base = str(tmp_path / "state")

    def in_a_mount_namespace() -> list:

        from recipes.env import holder, state as envstate
        _own_mount_namespace(base)
        real_replace = os.replace

        def interrupted(src: str, dst: str) -> None:
            if dst.endswith(holder.BIND_RECORD):
                raise KeyboardInterrupt
            real_replace(src, dst)
        os.replace = interrupted
        try:
            with holder.private_base(envstate.quiet_runner()):
                pass
            outcome = "no interrupt"
        except KeyboardInterrupt:
            outcome = "interrupted"
        finally:
            os.replace = real_replace
        return [outcome, mountinfo.is_mountpoint(base), sorted(os.listdir(base))]

    assert process.fork_call(in_a_mount_namespace) == ["interrupted", False,
                                                       [".made-by-nsrecipes"]]


def _own_mount_namespace(base: str) -> None:
    """In a forked child: a private mount namespace of its own, with ``base`` as the state
    directory, so what the test mounts never reaches the host."""
    sc.unshare(sc.CLONE_NEWNS)
    sc.make_propagation("/", "private", recursive=True)
    os.environ["NSR_STATE_DIR"] = base


@contextlib.contextmanager
def _after_the_bind(then: Callable[[], None]) -> Iterator[None]:
    """The state directory's bind on itself is made for real (``mount(2)`` in the tool, on
    both backends), then ``then()`` runs (a Ctrl-C, a kill), before anything else."""
    real_mount = sc.mount

    def bind_then(source, target, *a, **kw):
        result = real_mount(source, target, *a, **kw)
        if source == target:
            then()
        return result
    sc.mount = bind_then
    try:
        yield
    finally:
        sc.mount = real_mount


def _shell_runner():
    from nsutil.backend import Runner
    return Runner(backend="shell", keep=True, out=open(os.devnull, "w"))


def _interrupt() -> None:
    raise KeyboardInterrupt


def test_a_bind_of_ours_keeps_its_record_while_it_is_mounted(tmp_path) -> None:
    """A bind of nsrecipes' on the state directory keeps its record for as long as it is
    mounted: when someone else's bind of the directory lands on top of ours, the next
    private bind goes above theirs and both of ours are recorded; the last removal then
    unmounts the top one and must keep the record of the one under theirs (it cannot reach
    it), and once theirs is gone the next removal unmounts that one too. Nothing is left
    that no record names, and their bind is never touched."""
    base = str(tmp_path / "state")

    def in_a_mount_namespace() -> list:
        from recipes.env import holder, state as envstate
        _own_mount_namespace(base)
        run = envstate.quiet_runner()

        def on_base() -> int:
            return sum(1 for m in mountinfo.read() if m.mount_point == base)
        with holder.private_base(run):
            pass
        sc.mount(base, base, None, sc.MS_BIND)           # theirs, on top of ours
        theirs = mountinfo.mount_record(base)
        with holder.private_base(run):
            pass
        seen = [on_base()]                               # ours, theirs, ours
        holder.release_private_base(run)
        seen += [on_base(), mountinfo.is_recorded(base, theirs)]
        sc.umount(base)                                  # they take theirs away
        holder.release_private_base(run)
        seen += [on_base(), sorted(os.listdir(base)) if os.path.isdir(base) else None]
        return seen

    assert process.fork_call(in_a_mount_namespace) == [3, 2, True, 0, None]


def test_a_ctrl_c_while_mount_binds_leaves_no_bind(tmp_path) -> None:
    """A Ctrl-C that lands as the state directory's bind is made (the shell backend; the
    tool makes that bind itself) must not leave the bind either. Mocked: only the moment --
    the bind is made for real, then the KeyboardInterrupt the SIGINT handler would raise
    right after it is raised."""
    base = str(tmp_path / "state")

    def in_a_mount_namespace() -> list:
        from recipes.env import holder
        _own_mount_namespace(base)
        try:
            with _after_the_bind(_interrupt), holder.private_base(_shell_runner()):
                pass
            outcome = "no interrupt"
        except KeyboardInterrupt:
            outcome = "interrupted"
        return [outcome, mountinfo.is_mountpoint(base), sorted(os.listdir(base))]

    assert process.fork_call(in_a_mount_namespace) == ["interrupted", False,
                                                       [".made-by-nsrecipes"]]


def test_a_bind_whose_maker_was_killed_before_its_record_is_still_ours(tmp_path) -> None:
    """SIGKILL right after the state directory's bind was made, before its full record: the
    pending record written first lets the next run know the bind as its own -- the last
    removal unmounts it, and nothing is left. Mocked: only the moment of the kill
    (the maker kills itself right after the real ``mount``)."""
    base = str(tmp_path / "state")

    def in_a_mount_namespace() -> list:
        import signal
        from nsutil.backend import Runner
        from recipes.env import holder
        _own_mount_namespace(base)

        def maker() -> None:
            with _after_the_bind(lambda: os.kill(os.getpid(), signal.SIGKILL)), \
                    holder.private_base(_shell_runner()):
                pass
        pid = os.fork()
        if pid == 0:
            try:
                maker()
            finally:
                os._exit(0)
        _, status = os.waitpid(pid, 0)
        seen = [os.WIFSIGNALED(status), mountinfo.is_mountpoint(base), holder.ours_on_top(base)]
        holder.release_private_base(Runner(backend="native", keep=True, out=open(os.devnull, "w")))
        return seen + [mountinfo.is_mountpoint(base), os.path.exists(base)]

    assert process.fork_call(in_a_mount_namespace) == [True, True, True, False, False]


def test_a_write_cut_short_by_sigkill_does_not_keep_the_state_directory(tmp_path,
                                                                       monkeypatch) -> None:
    """A writer SIGKILLed between writing ``NAME.tmp.PID`` and renaming it leaves that file;
    once its writer is gone, prune removes it (and then the directory nsrecipes made), while
    the temporary file of a writer that still runs stays. Real: the writer is a real process
    killed with SIGKILL after it wrote its temporary file."""
    from nsutil import state
    base = str(tmp_path / "state")
    monkeypatch.setenv("NSR_STATE_DIR", base)
    state.state_dir("net")
    code = ("import os, sys; from nsutil import state; p = sys.argv[1]; "
            "open(p + '.tmp.%d' % os.getpid(), 'w').write('{'); os.kill(os.getpid(), 9)")
    for path in (os.path.join(base, ".private-bind.json"), os.path.join(base, "net", "veth-x.json")):
        subprocess.run([sys.executable, "-c", code, path], cwd=ROOT, env={**os.environ,
                       "PYTHONPATH": ROOT}, check=False)
    live = os.path.join(base, f"x.json.tmp.{os.getpid()}")
    open(live, "w").close()
    state.prune()
    assert sorted(os.listdir(base)) == [".made-by-nsrecipes", os.path.basename(live)]
    os.unlink(live)
    state.prune()
    assert not os.path.exists(base)


def test_a_prune_between_the_steps_of_a_make_leaves_no_unmarked_directory(tmp_path,
                                                                          monkeypatch) -> None:
    """A process makes ``net/`` in the state directory just as another prunes the directory
    (empty but for its mark): the directory is made again with its mark, so the next prune
    removes it. Made without its mark, it would count as the user's and stay for ever (the
    suite's guard once found such an empty /run/nsrecipes). The interleaving is forced: the
    other process's prune runs inside this one's mkdir, between the two steps (os.mkdir
    wrapped; a race this narrow does not happen on demand)."""
    from nsutil import state
    base = str(tmp_path / "state")
    monkeypatch.setenv("NSR_STATE_DIR", base)
    state.state_dir()
    real_mkdir = os.mkdir
    pruned: list[bool] = []

    def mkdir_then_pruned(path, mode=0o777, **kw):
        try:
            return real_mkdir(path, mode, **kw)
        except FileExistsError:
            if path == base and not pruned:
                pruned.append(True)
                state.prune()              # the other process: empty, marked, so removed
            raise
    monkeypatch.setattr(os, "mkdir", mkdir_then_pruned)
    state.state_dir("net")
    monkeypatch.setattr(os, "mkdir", real_mkdir)
    assert pruned and sorted(os.listdir(base)) == [state.MADE_MARK, "net"]
    state.prune()
    assert not os.path.exists(base)


def test_a_ctrl_c_while_the_state_directory_is_made_leaves_it_marked(tmp_path,
                                                                    monkeypatch) -> None:
    """A Ctrl-C that lands right after the state directory's mkdir is held back until its
    mark is in it: the KeyboardInterrupt still comes, and the directory, marked as ours, is
    pruned later. (A test that interrupts env-create left an empty unmarked /run/nsrecipes:
    the user's, by the mark's rule. The SIGINT is sent from a wrapped os.mkdir, right after
    the real one: a Ctrl-C does not land on one bytecode on demand.)"""
    import signal

    from nsutil import state
    base = str(tmp_path / "state")
    monkeypatch.setenv("NSR_STATE_DIR", base)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    real_mkdir = os.mkdir

    def mkdir_then_ctrl_c(path, mode=0o777, **kw):
        real_mkdir(path, mode, **kw)
        if path == base:
            os.kill(os.getpid(), signal.SIGINT)
    try:
        monkeypatch.setattr(os, "mkdir", mkdir_then_ctrl_c)
        with pytest.raises(KeyboardInterrupt):
            state.state_dir()
    finally:
        monkeypatch.setattr(os, "mkdir", real_mkdir)
        signal.signal(signal.SIGINT, previous)
    assert os.listdir(base) == [state.MADE_MARK]
    state.prune()
    assert not os.path.exists(base)
