"""The README and docs/ pages, checked against the real kernel (``pytest -m docs``).

Every fenced block of README.md and docs/*.md is one test (tests/docscheck.py says how each
kind is judged): the commands shown with their output are run, each page in a sandbox of its
own, and what they print must be what the page shows; Python blocks are run; output the suite
cannot reproduce must carry its "Example run (DATE, MACHINE):" line. ``--update-docs`` writes
what the commands print now over what the pages show.
"""
from __future__ import annotations

import os
import re
from contextlib import ExitStack
from pathlib import Path

import pytest

import docscheck
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
    cgroup view of its own where the page asks for it: docscheck.OWN_CGROUPS); at the end each page's environments are removed (a page that leaves one fails) and, with
    --update-docs, the new outputs written."""
    stack = ExitStack()
    docscheck.UPDATE["on"] = request.config.getoption("--update-docs")
    docscheck.OPEN_SANDBOX["fn"] = lambda path: stack.enter_context(
        open_sandbox(hidden=docscheck.HIDDEN, state="/run/nsrecipes",
                     own_cgroups=docscheck.OWN_CGROUPS in Path(path).read_text()))
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
