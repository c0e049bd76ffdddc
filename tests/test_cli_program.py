"""The installed command ``nsr TASK``: from any directory, the same tasks and help as
``invoke TASK`` in the checkout, --version, completion, a wheel that holds what it needs; and
what both commands do with a command line a newcomer gets wrong."""
from __future__ import annotations

import glob
import os
import re
import subprocess
import sys
import zipfile

import pytest

from helpers import INVOKE, NSR, ROOT, cli, nsr, one_line_error


@pytest.mark.userspace
def test_nsr_lists_the_same_tasks_from_any_directory():
    listed = nsr("--list")
    assert listed.returncode == 0, listed.stderr
    names = {ln.split()[0] for ln in listed.stdout.splitlines() if ln.startswith("  ")}
    ours = {ln.split()[0] for ln in cli("--list").stdout.splitlines() if ln.startswith("  ")}
    assert names == ours and {"pid-demo", "env-create", "net-topo", "doctor"} <= names


@pytest.mark.userspace
def test_nsr_version_and_completion_script():
    from importlib.metadata import version
    assert nsr("--version").stdout.strip() == f"nsrecipes {version('nsrecipes')}"
    script = nsr("--print-completion-script", "bash").stdout
    assert "_complete_nsr" in script and "nsr --complete" in script
    done = nsr("--complete", "--", "nsr", "uts-demo", "--h")
    assert "--hostname" in done.stdout.split()


@pytest.mark.userspace
@pytest.mark.parametrize("args", [["uts-demo", "--help"], ["env-rm", "--help"],
                                  ["--help", "container-run"], ["env-exec", "x", "-h"]])
def test_nsr_task_help_is_invokes(args):
    """What invoke prints for a task's help, nsr prints too (but for its own name, and with
    each ``invoke TASK`` as ``nsr TASK``); also where invoke alone would take --help as the
    value of a positional argument."""
    ours, theirs = nsr(*args), cli(*args)
    assert ours.returncode == theirs.returncode == 0, ours.stderr + theirs.stderr
    tasks = {ln.split()[0] for ln in cli("--list").stdout.splitlines() if ln.startswith("  ")}
    as_typed = re.sub(r"\binvoke (--help\b|[a-z][a-z0-9-]*)",
                      lambda m: f"nsr {m[1]}" if m[1] in tasks | {"--help"} else m[0],
                      theirs.stdout.replace("Usage: inv[oke] ", "Usage: nsr "))
    assert ours.stdout == as_typed
    assert "Docstring:" in ours.stdout and "--backend" in ours.stdout


@pytest.mark.userspace
def test_what_nsr_prints_names_nsr():
    """What is printed on stdout (here a task's help; a recipe's "remove with: invoke ..."
    goes the same way): through ``nsr`` it says ``nsr TASK``, and a package called invoke
    stays invoke."""
    shown = nsr("--help", "container-run").stdout
    assert "Run a command in a container: nsr container-run [OPTIONS] -- CMD ARGS..." in shown
    assert "invoke container-run" not in shown
    assert "pip download -d DIR invoke pyroute2" in nsr("--help", "machines-install").stdout


def test_nsr_runs_a_demo_from_root_dir():
    """cd / && nsr pid-demo: no collection to find, no checkout needed."""
    done = nsr("pid-demo", "--backend", "native")
    assert done.returncode == 0, done.stderr
    assert "<- PID 1, as in the document" in done.stdout


@pytest.mark.userspace
def test_wheel_holds_the_cli_and_nsr_runs_from_it(tmp_path):
    """pip wheel holds cli/, nsutil/, recipes/ and no top-level tasks module; installed in a
    fresh venv, its nsr runs from / on the wheel's own code. The dependencies come from this
    venv (a path line in the new venv), so no index is needed."""
    import shutil
    src = tmp_path / "src"    # a copy: a build/ left in the checkout would hide a missing package
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".*", "build", "*.egg-info", "__pycache__", "tests", "docs", "bench"))
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w",
                            str(tmp_path), str(src)], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr
    wheel, = glob.glob(str(tmp_path / "nsrecipes-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"cli", "nsutil", "recipes"}
    assert {"cli/program.py", "cli/collection.py", "cli/demos.py"} <= set(names)
    points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt")))
    assert "nsr = cli:main" in points.decode()
    venv = tmp_path / "nsr-venv"
    subprocess.run(["/usr/bin/python3", "-m", "venv", str(venv)], check=True, timeout=300)
    subprocess.run([str(venv / "bin/pip"), "install", "-q", "--no-deps", "--no-index", wheel],
                   check=True, timeout=300, capture_output=True)
    site, = glob.glob(str(venv / "lib/python3*/site-packages"))
    import invoke
    deps = os.path.dirname(os.path.dirname(invoke.__file__))
    with open(os.path.join(site, "nsr-deps.pth"), "w") as f:
        f.write(deps + "\n")
    where = subprocess.run([str(venv / "bin/python"), "-c", "import cli; print(cli.__file__)"],
                           cwd="/", capture_output=True, text=True, timeout=60)
    assert where.stdout.startswith(site), where.stdout + where.stderr
    no_tasks = subprocess.run([str(venv / "bin/python"), "-c", "import tasks"], cwd="/",
                              capture_output=True, text=True, timeout=60)
    assert "No module named 'tasks'" in no_tasks.stderr
    ran = subprocess.run([str(venv / "bin/nsr"), "pid-demo", "--explain"], cwd="/",
                         capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0 and "unshare" in ran.stdout, ran.stderr


@pytest.mark.userspace
@pytest.mark.parametrize("program", [INVOKE, NSR])
def test_help_to_a_reader_that_left_ends_quietly(program):
    """`TASK --help | head`: the reader has gone before the help is written; no
    BrokenPipeError traceback, no "Exception ignored" line."""
    r, w = os.pipe()
    os.close(r)
    try:
        done = subprocess.run([program, "env-rm", "--help"], cwd=ROOT, stdout=w,
                              stderr=subprocess.PIPE, text=True, timeout=60)
    finally:
        os.close(w)
    assert done.stderr == "", done.stderr


# --- a command line a newcomer gets wrong: one line with a hint ----------------------------

@pytest.mark.userspace
@pytest.mark.parametrize("run", [cli, nsr], ids=["invoke", "nsr"])
@pytest.mark.parametrize("args", [["container-run"], ["container-run", "--explain"],
                                  ["container-run", "--memory", "64M"],
                                  ["net-exec", "h1", "--scope", "S"]])
def test_no_command_after_dashes_is_one_line(run, args):
    line = one_line_error(run(*args))
    name = "invoke" if run is cli else "nsr"
    assert line.startswith(f"nsrecipes: {args[0]}: no command given")
    assert f"(hint: {name} {args[0]} " in line and "-- CMD ARGS...)" in line


@pytest.mark.userspace
@pytest.mark.parametrize("run", [cli, nsr], ids=["invoke", "nsr"])
def test_a_command_without_dashes_is_shown_with_them(run):
    proc = run("env-exec", "nsr-nosuch", "true")
    assert proc.returncode == 2
    name = "invoke" if run is cli else "nsr"
    assert one_line_error(proc) == (
        "nsrecipes: env-exec: 'true' is none of its options (hint: the command goes after "
        f"--: {name} env-exec nsr-nosuch -- true)")


@pytest.mark.userspace
@pytest.mark.parametrize("args,says", [
    (["nosuch-task"], "no idea what 'nosuch-task' is (hint: invoke --list lists the tasks)"),
    (["uts-demo", "--bogus"], "uts-demo: no idea what '--bogus' is (hint: invoke --help "
                              "uts-demo lists its options)"),
    (["env-rm"], "env-rm: missing 'name' (hint: invoke --help env-rm shows the usage)"),
    (["uts-demo", "--hostname"], "uts-demo: --hostname needs a value"),
])
def test_what_invoke_cannot_parse_is_one_line(args, says):
    assert says in one_line_error(cli(*args))


@pytest.mark.userspace
@pytest.mark.parametrize("run", [cli, nsr], ids=["invoke", "nsr"])
def test_a_recipes_hint_names_the_command_the_user_typed(run):
    """The recipes' hints name a task as ``invoke TASK``; through ``nsr`` the line says
    ``nsr TASK`` (and ``pip install invoke`` in a hint would stay as it is)."""
    name = "invoke" if run is cli else "nsr"
    assert one_line_error(run("env-exec", "nsr-nosuch", "--", "true")) == (
        "nsrecipes: environment 'nsr-nosuch' does not exist (hint: see "
        f"`{name} env-ls` for the environments there are)")
    assert f"(hint: `{name} container-ls --all` lists them" in one_line_error(
        run("container-exec", "nsr-nosuch", "--", "true"))


@pytest.mark.userspace
@pytest.mark.parametrize("how,status", [("sys.exit(3)", 3), ("sys.exit('bad')", 1),
                                        ("pass", 0), ("raise RuntimeError('x')", 1)])
def test_the_command_line_ends_without_the_interpreter_s_teardown(how, status):
    """``nsr`` and ``invoke`` in the checkout end once every exit hook has run, with the
    status sys.exit was given, and skip the teardown of the modules (an object's __del__ at
    teardown does not run); stdout is flushed. After a traceback Python ends as usual."""
    code = ("import atexit, sys\n"
            "from cli.common import end_without_teardown\n"
            "from cli.program import quiet_broken_pipe\n"
            "end_without_teardown(); quiet_broken_pipe()\n"
            "atexit.register(lambda: print('hook ran'))\n"
            "class Late:\n"
            "    def __del__(self): print('teardown ran')\n"
            "late = Late()\n"
            "print('buffered', end='')\n"
            f"{how}\n"
            "sys.exit()\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == status, done.stderr
    teardown = how.startswith("raise")
    assert done.stdout == "buffered" + "hook ran\n" + ("teardown ran\n" if teardown else "")


@pytest.mark.userspace
@pytest.mark.parametrize("args,status", [(["--version"], 0), (["uts-demo", "--explain"], 0),
                                         (["env-exec", "nsr-nosuch", "--", "true"], 1)])
def test_nsr_s_main_ends_without_the_teardown(args, status):
    """``nsr``'s own entry point (cli.main) ends through end_without_teardown: an object
    whose __del__ would speak at the interpreter's teardown stays silent, and the status is
    the command's (the console script's ``sys.exit(main())`` included)."""
    code = ("import sys\n"
            "class Late:\n"
            "    def __del__(self): print('teardown ran')\n"
            "late = Late()\n"
            f"sys.argv = ['nsr', *{args!r}]\n"
            "from cli import main\n"
            "sys.exit(main())\n")
    done = subprocess.run([sys.executable, "-c", code], cwd="/", capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONPATH": ROOT})
    assert done.returncode == status, done.stderr
    assert "teardown ran" not in done.stdout
