"""A detached container's life without root: the real CLI as uid 65534 (no capabilities, a
home and an ``XDG_RUNTIME_DIR`` of its own, see :mod:`asuser`), on both backends, against
the real kernel. The container's record is in the user's state directory, never in root's:
root's ``container-ls`` and ``cleanup`` do not see it, and the user's list only the user's
own. ``container-exec`` joins the container's user namespace before the others (``nsenter
--user --preserve-credentials``; natively setns(CLONE_NEWUSER) first). The ``home`` fixture
fails the test if a process it started or a record outlives it.
"""
from __future__ import annotations

import json
import os
import re

from asuser import USER_UID, as_user, home  # noqa: F401 (home: a fixture)
from containerkit import run_ct
from nsutil.backend import Runner
from nsutil.names import scope_id
from recipes.container import ids, lifecycle
from recipes.ops import cleanup


def _root_sees(name: str) -> list[str]:
    """Where root's container-ls --all and cleanup (kept or removed) name ``name``."""
    plan = cleanup.sweep()
    return ([f"container-ls: {r['name']}" for r in lifecycle.rows(all=True)
             if r["name"] == name] +
            [f"cleanup: {i.name}" for i in plan.remove + plan.kept if name in i.name])


def test_detached_life_as_user(backend: str, home: str) -> None:
    """As uid 65534: run --detach -> ls (running, only the user's: not root's kept
    container) -> exec -- id (root inside, uid 65534 outside; --user 1000 unmapped is one
    line) -> logs -> cleanup keeps it (native) -> stop -> rm (no --force: it stopped);
    root never sees it; nothing is left."""
    env = {"NSR_BACKEND": backend}
    name, roots = f"nsr-c-ul{scope_id()}", f"nsr-c-ur{scope_id()}"
    assert run_ct(backend, ["true"], rm=False, name=roots)[0] == 0   # root's, kept (exited)
    try:
        run = as_user(home, "container-run", "--detach", "--name", name, "--",
                      "sh", "-c", "echo up; sleep 600", env=env)
        assert run.returncode == 0 and re.fullmatch(r"[0-9a-f]{64}\n", run.stdout), run.stderr
        assert os.path.isdir(os.path.join(home, "run", "nsrecipes", name))
        ls = as_user(home, "container-ls", "--all", "--json", env=env)
        assert [(r["name"], r["state"]) for r in json.loads(ls.stdout)] == [(name, "running")], \
            ls.stdout + ls.stderr
        assert _root_sees(name) == []
        done = as_user(home, "container-exec", name, "--", "sh", "-c",
                       "id -u; cat /proc/self/uid_map; hostname", env=env)
        assert done.returncode == 0, done.stderr
        assert done.stdout.split() == ["0", "0", str(USER_UID), "1", name], done.stdout
        unmapped = as_user(home, "container-exec", "--user", "1000", name, "--", "id", env=env)
        assert unmapped.returncode == 2 and "uid 1000 is not mapped" in unmapped.stderr, \
            unmapped.stderr
        logs = as_user(home, "container-logs", name, env=env)
        assert (logs.returncode, logs.stdout) == (0, "up\n"), logs.stderr
        if backend == "native":   # cleanup has no shell form: once is enough
            dry = as_user(home, "cleanup", "--dry-run", env=env)
            assert f"keeping container {name}: runs" in dry.stdout, dry.stdout + dry.stderr
            assert roots not in dry.stdout
        stop = as_user(home, "container-stop", "--time", "5", name, env=env)
        assert (stop.returncode, stop.stdout) == (0, f"{name}\n"), stop.stderr
        rm = as_user(home, "container-rm", name, env=env)
        assert (rm.returncode, rm.stdout) == (0, f"{name}\n"), rm.stderr
        assert not os.path.exists(os.path.join(home, "run", "nsrecipes", name))
    finally:
        if os.path.isdir(os.path.join(home, "run", "nsrecipes", name)):   # the test failed
            as_user(home, "container-rm", "--force", name, env=env)
        with Runner(backend="native", keep=True) as run:
            lifecycle.remove(run, ids.resolve(roots), force=True)
