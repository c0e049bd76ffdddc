"""What the container tests share: the cached rootfs (built once per module), a container
run with its output captured, and the snapshot of nsr-c-* cgroups and records."""
from __future__ import annotations

import os
import tempfile

import pytest

from nsutil import cgroupfs
from nsutil.backend import Runner
from nsutil.state import state_dir
from recipes import container
from recipes.container import rootfs


@pytest.fixture(scope="module", autouse=True)
def rootfs_dir():
    """The cached busybox rootfs (containers need root: the module skips without it)."""
    if os.geteuid() != 0:
        pytest.skip("containers need root")
    with Runner(backend="native") as run:
        return rootfs.ensure_default(run)


def state_entries() -> set[str]:
    """The containers' directories under the state directory."""
    base = state_dir(create=False)
    return {n for n in os.listdir(base) if n.startswith("nsr-c-")} if os.path.isdir(base) else set()


def ours() -> dict[str, set[str]]:
    """What containers leave if they leak: nsr-c-* cgroups and state directories."""
    return {"cgroups": {d for d in cgroupfs.find_ours() if "/nsr-c-" in d},
            "state": state_entries()}


def run_ct(backend: str, argv: list[str], **kw) -> tuple[int, str, str]:
    """Run a container; its exit status, stdout and stderr."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, \
            open(os.devnull) as null:
        with Runner(backend=backend) as run:
            code = container.run_container(run, argv, stdin=null.fileno(), stdout=out.fileno(),
                                           stderr=err.fileno(), **kw)
        out.seek(0)
        err.seek(0)
        return code, out.read().decode(), err.read().decode()
