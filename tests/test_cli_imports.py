"""The command line starts quickly: what every run pays for is only the collection of tasks
(invoke, cli/ and nsrecipes' error types); a task imports its recipes, and their heavy
dependencies, when it runs. And the recipes' bytecode is cached as for any package, although
invoke turns the cache off before it loads tasks.py (bench/cli_start.py measures both)."""
from __future__ import annotations

import glob
import os
import subprocess
import sys

import pytest

from helpers import INVOKE, ROOT

#: what loading the collection must not import: each is needed by some tasks only
HEAVY = ("pyroute2", "sh", "zstandard", "graphviz", "fabric", "http.client", "tomllib",
         "ctypes", "platform", "hashlib", "recipes", "nsutil.backend", "nsutil.layers",
         "nsutil.netlink")


def modules_after(code: str) -> set[str]:
    """The modules a new interpreter has imported after running ``code`` in the checkout."""
    done = subprocess.run([sys.executable, "-c", code + "\nimport sys\nprint(*sys.modules)"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return set(done.stdout.split())


@pytest.mark.userspace
@pytest.mark.parametrize("code", ["import tasks", "from cli.program import program"])
def test_the_collection_imports_no_task_s_dependencies(code):
    """``invoke`` loads tasks.py, ``nsr`` cli.program: neither imports a recipe, netlink,
    the sh package, the image store's compression or HTTP, nor ctypes (a package's
    submodules count: ``recipes.cow`` is ``recipes``)."""
    loaded = modules_after(code)
    eager = sorted(m for m in loaded if m in HEAVY or m.split(".")[0] in HEAVY)
    assert eager == [], f"{code!r} imports {eager}: import them inside the task that needs them"


def _pyc_of(prefix: str, module_path: str) -> list[str]:
    """The cached bytecode of ``module_path`` (relative to the checkout) under ``prefix``."""
    stem = os.path.splitext(os.path.basename(module_path))[0]
    where = os.path.join(prefix, ROOT.lstrip("/"), os.path.dirname(module_path))
    return glob.glob(os.path.join(where, f"{stem}.*.pyc"))


@pytest.mark.userspace
def test_a_task_s_recipes_have_their_bytecode_cached(tmp_path):
    """After ``invoke uts-demo --explain`` the recipe it imported (recipes/uts.py) has a .pyc,
    as it has after ``import recipes.uts``; with PYTHONDONTWRITEBYTECODE it has none."""
    env = dict(os.environ, PYTHONPYCACHEPREFIX=str(tmp_path / "cached"))
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    done = subprocess.run([INVOKE, "uts-demo", "--explain"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert _pyc_of(str(tmp_path / "cached"), "recipes/uts.py"), "recipes/uts.py was not cached"

    env.update(PYTHONPYCACHEPREFIX=str(tmp_path / "off"), PYTHONDONTWRITEBYTECODE="1")
    done = subprocess.run([INVOKE, "uts-demo", "--explain"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert not os.path.exists(tmp_path / "off"), "PYTHONDONTWRITEBYTECODE=1 was not respected"


@pytest.mark.userspace
def test_the_parser_builds_the_options_of_the_named_tasks_only():
    """Invoke asks the collection for every task's parser context on each run; once the
    command line is known, only the tasks it names get their options (the rest their names,
    so a mistyped task is still told from a task), and that command line parses as before."""
    from invoke import Program
    from invoke.parser import Parser

    import copy

    from cli.collection import ROOMS, Tasks, tasks_of
    # copies: invoke's own to_contexts() pops each help text off the task it reads, and a
    # later test (test_every_task_has_help) would find none
    tasks = Tasks(*[copy.deepcopy(t) for t in tasks_of(*ROOMS)])
    full = {c.name: c for c in tasks.to_contexts()}
    tasks.named = ["uts-demo", "--hostname", "box", "--explain"]
    some = {c.name: c for c in tasks.to_contexts()}
    assert set(some) == set(full) and len(full) > 40
    assert [n for n, c in some.items() if c.flags] == ["uts-demo"]
    assert set(some["uts-demo"].flags) == set(full["uts-demo"].flags)
    parsed = Parser(initial=Program().initial_context,
                    contexts=list(some.values())).parse_argv(tasks.named)
    assert parsed[1].args["hostname"].value == "box" and parsed[1].args["explain"].value


#: runs invoke's own command in the checkout and says how often the command line was parsed
#: and for how many tasks the parser had options (each parse deep-copies them all)
COUNT_PARSES = """
import sys
import invoke.parser
real = invoke.parser.Parser.parse_argv
count = [0, 0]
def counted(self, argv):
    count[0] += 1
    count[1] = max(count[1], len([c for c in self.contexts.values() if c.flags]))
    return real(self, argv)
invoke.parser.Parser.parse_argv = counted
sys.argv = ["invoke", *sys.argv[1:]]
from invoke.main import program
try:
    program.run()
finally:
    print("parses", count[0], "tasks with options", count[1], file=sys.stderr)
"""


@pytest.mark.userspace
@pytest.mark.parametrize("args, status", [(["uts-demo", "--explain"], 0),
                                          (["container-run", "true"], 2)])
def test_invoke_in_the_checkout_parses_the_command_line_once(args, status):
    """invoke parses its core options, then the tasks; tasks.py's one-line mistakes come
    from that parse of the tasks, not from a third and fourth parse of its own, and that
    parse builds the options of the named task only (cli.collection.Tasks)."""
    done = subprocess.run([sys.executable, "-c", COUNT_PARSES, *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == status, done.stderr
    lines = done.stderr.splitlines()
    assert lines[-1] == "parses 2 tasks with options 1"
    if status:
        assert lines[:-1] == ["nsrecipes: container-run: 'true' is none of its options (hint: the "
                              "command goes after --: invoke container-run -- true)"]
