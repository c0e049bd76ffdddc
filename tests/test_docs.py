"""The README and docs/ pages, checked against the real kernel (``pytest -m docs``).

Every fenced block of README.md and docs/*.md is one test (tests/docscheck.py says how each
kind is judged): the commands shown with their output are run, each page in a sandbox of its
own, and what they print must be what the page shows; Python blocks are run; output the suite
cannot reproduce must carry its "Example run (DATE, MACHINE):" line. ``--update-docs`` writes
what the commands print now over what the pages show.
"""
from __future__ import annotations

import ast
import os
import re
from contextlib import ExitStack
from pathlib import Path

import pytest

import docscheck
from asuser import user_home
from helpers import ROOT
from sandboxkit import open_sandbox

pytestmark = pytest.mark.docs

EXAMPLES = docscheck.examples()


def _id(example) -> str:
    block = example.region.parsed
    return f"{os.path.relpath(example.path, ROOT)}:{block.line}:{block.kind or 'none'}"


@pytest.fixture(scope="module")
def pages(request: pytest.FixtureRequest):
    """One sandbox per page, opened by the page's first block that runs something (with a
    cgroup view of its own where the page asks for it: docscheck.OWN_CGROUPS), and a home for
    its unprivileged user if it has ``console user`` blocks; at the end each page's
    environments are removed (a page that leaves one fails; the user's are checked when its
    home goes) and, with --update-docs, the new outputs written."""
    stack = ExitStack()
    docscheck.UPDATE["on"] = request.config.getoption("--update-docs")
    docscheck.OPEN_SANDBOX["fn"] = lambda path: stack.enter_context(
        open_sandbox(hidden=docscheck.HIDDEN, state="/run/nsrecipes",
                     own_cgroups=docscheck.OWN_CGROUPS in Path(path).read_text()))
    # a user's home goes before the sandbox it was used in (the stack closes last in, first
    # out), and what the user's commands left fails the run (asuser.UserLeak)
    docscheck.OPEN_HOME["fn"] = lambda: stack.enter_context(
        user_home(parent=docscheck.USER_HOMES))
    left: list[str] = []
    try:
        yield docscheck.STATE
    finally:
        try:
            for path, state in docscheck.STATE.items():
                if state.sandbox is not None:
                    left += _remove_leftovers(path, state.sandbox)
                if state.updates:
                    docscheck.write_updates(path, state.updates)
        finally:
            docscheck.STATE.clear()
            stack.close()
    assert not left, "pages that leave things behind:\n" + "\n".join(left)


def _remove_leftovers(path: str, sandbox) -> list[str]:
    """Remove the environments a page's commands left in its sandbox; name them."""
    root = sandbox.path("/run/nsrecipes")
    names = sorted(n[:-5] for n in (os.listdir(root) if os.path.isdir(root) else [])
                   if n.endswith(".json") and not n.startswith("."))
    for name in names:
        docscheck.run_in(sandbox, ["invoke", "env-rm", name], None)
    return [f"{os.path.relpath(path, ROOT)}: environment {n}" for n in names]


@pytest.mark.parametrize("example", EXAMPLES, ids=[_id(e) for e in EXAMPLES])
def test_block(example, pages) -> None:
    """The block shows what nsrecipes does now (see tests/docscheck.py)."""
    example.evaluate()


def test_every_page_is_one_click_from_the_readme() -> None:
    readme = Path(ROOT, "README.md").read_text()
    linked = set(re.findall(r"\]\((docs/[^)#\s]+\.md)", readme))
    pages = {str(p.relative_to(ROOT)) for p in Path(ROOT, "docs").glob("*.md")}
    assert pages, "docs/ has no page"
    assert pages <= linked, f"pages the README does not link: {sorted(pages - linked)}"


def test_links_stay_in_the_repository_and_name_no_machine() -> None:
    """No link leaves the repository (web pages are fine), no page names a path of the
    machine it was written on, and every relative link resolves."""
    bad = []
    for page in docscheck.pages():
        text = page.read_text()
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+://|#|mailto:", target):
                continue
            resolved = (page.parent / target.split("#")[0]).resolve()
            if not str(resolved).startswith(os.path.realpath(ROOT) + "/") or not resolved.exists():
                bad.append(f"{page.name}: link {target}")
        for path in re.findall(r"(?<![\w.])/(?:work|home|root|Users)/[\w./-]*", text):
            bad.append(f"{page.name}: machine path {path}")
        if ROOT in text:
            bad.append(f"{page.name}: the checkout's path")
    assert not bad, "\n".join(bad)


def test_the_checker_sees_an_edited_line() -> None:
    """The comparison itself: one changed word in an output fails it; what varies does not."""
    shown = "nsr-a (10.200.0.1/24) <-> nsr-b: packets go both ways\nholder pid 123\n"
    assert docscheck.matches(shown, shown.replace("123", "98765"))
    assert not docscheck.matches(shown, shown.replace("both", "one"))
    assert docscheck.matches("a\n...\nz\n", "a\nb\nc\nz\n")
    assert not docscheck.matches("a\n...\nz\n", "a\nb\nc\ny\n")


def _example_command(text: str, pattern: str) -> str:
    """The command an example's docstring or comment tells a user to run."""
    found = re.search(pattern, text, re.MULTILINE)
    assert found, f"no run line matching {pattern!r} in the example"
    return found.group(1).strip()


@pytest.mark.parametrize("backend", ["shell", "native"])
def test_provision_example_runs_as_its_docstring_says(backend: str) -> None:
    """examples/provision_client_server.py, run with the command its docstring gives (in a
    page sandbox, so its environments meet no other run's)."""
    path = Path(ROOT, "examples", "provision_client_server.py")
    command = _example_command(ast.get_docstring(ast.parse(path.read_text())),
                               r"^\s+(\.venv/bin/python examples/\S+)")
    with open_sandbox(hidden=docscheck.HIDDEN, own_cgroups=False,
                      state="/run/nsrecipes") as box:
        proc = docscheck.run_in(box, ["bash", "-c", f"{command} --backend {backend}"], None)
    assert proc.returncode == 0, proc.stdout
    assert "connected to 10.250.0.1:8080 over TCP and got: 'hello from server'" in proc.stdout
    assert "[5] both environments removed" in proc.stdout


def test_lab_example_runs_as_its_comment_says() -> None:
    """examples/lab.toml, built with the command its comment gives; on a kernel without netem
    (this suite's own machine) that command is refused in one line, and the same lab without
    its delay, jitter and loss is built instead."""
    path = Path(ROOT, "examples", "lab.toml")
    command = _example_command(path.read_text(), r"^#\s+(invoke net-topo --file examples/lab\.toml.*)$")
    drawn = Path(ROOT, "lab.svg")
    assert not drawn.exists(), "a lab.svg of someone else's is in the checkout"
    with open_sandbox(hidden=docscheck.HIDDEN, own_cgroups=False,
                      state="/run/nsrecipes") as box:
        try:
            proc = docscheck.run_in(box, ["bash", "-c", command], None)
            if "no netem qdisc" in proc.stdout:
                assert proc.returncode != 0 and proc.stdout.count("nsrecipes:") == 1, proc.stdout
                stripped = ("sed -E '/^(delay|jitter|loss) /d' examples/lab.toml > /tmp/lab.toml && "
                            + command.replace("examples/lab.toml", "/tmp/lab.toml"))
                proc = docscheck.run_in(box, ["bash", "-c", stripped], None)
            assert proc.returncode == 0, proc.stdout
            assert "check: 10/10 pairs exchanged packets" in proc.stdout, proc.stdout
            assert drawn.exists()
        finally:
            down = docscheck.run_in(box, ["invoke", "net-topo", "--down"], None)
            drawn.unlink(missing_ok=True)
    assert down.returncode == 0, down.stdout
