"""Open SVG files in a real browser (headless Chromium) and report what it rendered.

An SVG embedded with <img> or <object> hides its text from the page, so each SVG is
inlined into one HTML page; a script at the end of the page collects, for every picture,
the text of each ``<text>`` element the browser really laid out (``getBBox().width > 0``)
and the picture's rendered size, and writes them into the DOM as JSON; ``--dump-dom``
prints that DOM. One browser start serves several pictures (Chromium starts slowly).

The browser gets a new empty profile in a temporary directory (removed afterwards) and no
network: every host name resolves to nothing and the proxy is a closed port.

In the test VM (``NSR_VM=1``, set by tests/vm/guest) one Chromium start under TCG takes
minutes, so there :func:`rendered` reads the text of every ``<text>`` element from the SVG's
XML instead (what the kernel-dependent part of a test needs: that the picture names what the
demo made); sizes and boxes are then empty. The host run opens every picture in Chromium.
"""
from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import tempfile

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-extensions", "--disable-default-apps", "--mute-audio",
         "--host-resolver-rules=MAP * ~NOTFOUND", "--proxy-server=127.0.0.1:9",
         "--allow-file-access-from-files"]

SCRIPT = """
<script>
const found = [];
for (const svg of document.querySelectorAll('div.pic > svg')) {
  const box = svg.getBoundingClientRect();
  const texts = [], boxes = [];
  for (const t of svg.querySelectorAll('text')) {
    const b = t.getBBox();
    if (b.width > 0 && b.height > 0) {
      const r = t.getBoundingClientRect();
      texts.push(t.textContent);
      boxes.push([r.left, r.top, r.width, r.height]);
    }
  }
  found.push({width: box.width, height: box.height, texts: texts, boxes: boxes});
}
const out = document.createElement('pre');
out.id = 'nsr-result';
out.textContent = JSON.stringify(found);
document.body.appendChild(out);
</script>
"""


def require_chromium() -> None:
    """Skip the calling test when Chromium is not installed (CI installs it)."""
    from helpers import require_tool
    require_tool(CHROMIUM, "chromium")


def _inline(svg_text: str) -> str:
    """The <svg> element of an SVG file, without the XML prolog and DOCTYPE."""
    start = svg_text.find("<svg")
    assert start >= 0, "not an SVG file"
    return svg_text[start:]


def _run(args: list[str], profile: str, timeout: float) -> str:
    done = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args],
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "HOME": profile})
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def rendered(paths: list[str], timeout: float = 300) -> list[dict]:
    """Open the SVG files ``paths`` in one headless Chromium; for each, in order, a dict
    ``{"width", "height", "texts", "boxes"}``: its rendered size in CSS pixels, the text of
    every ``<text>`` element the browser laid out with a non-empty box, and those boxes
    (left, top, width, height)."""
    if os.environ.get("NSR_VM") == "1":
        return [_texts_of(path) for path in paths]
    require_chromium()
    tmp = tempfile.mkdtemp(prefix="browser-test-")
    try:
        body = []
        for path in paths:
            with open(path) as f:
                body.append(f'<div class="pic" title="{html.escape(path)}">'
                            f'{_inline(f.read())}</div>')
        page = os.path.join(tmp, "page.html")
        with open(page, "w") as f:
            f.write("<!DOCTYPE html><html><head><meta charset='utf-8'></head><body>"
                    + "\n".join(body) + SCRIPT + "</body></html>")
        profile = os.path.join(tmp, "profile")
        os.mkdir(profile)
        dom = _run(["--dump-dom", f"file://{page}"], profile, timeout)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    match = re.search(r'<pre id="nsr-result">(.*?)</pre>', dom, re.S)
    assert match, "the page's script did not run:\n" + dom[-1000:]
    result = json.loads(html.unescape(match.group(1)))
    assert len(result) == len(paths), result
    return result


def _texts_of(path: str) -> dict:
    """The VM's stand-in for :func:`rendered` (see the module docstring)."""
    import xml.etree.ElementTree as ET
    texts = ["".join(t.itertext()) for t in ET.parse(path).iter("{http://www.w3.org/2000/svg}text")]
    return {"width": 0, "height": 0, "texts": texts, "boxes": [[0, 0, 0, 0]] * len(texts)}


def screenshot(path: str, png: str, size: str = "1400,1000", timeout: float = 300) -> None:
    """Render the SVG file ``path`` in headless Chromium into the PNG file ``png`` (for a
    human look at readability)."""
    require_chromium()
    tmp = tempfile.mkdtemp(prefix="browser-test-")
    try:
        profile = os.path.join(tmp, "profile")
        os.mkdir(profile)
        _run([f"--screenshot={os.path.abspath(png)}", f"--window-size={size}",
              "--hide-scrollbars", f"file://{os.path.abspath(path)}"], profile, timeout)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def overlapping(picture: dict, wanted: set[str], share: float = 0.4) -> list[tuple[str, str]]:
    """Pairs of the texts ``wanted`` (e.g. the host names) whose rendered boxes overlap in
    ``picture`` (one item of :func:`rendered`) by more than ``share`` of the smaller box's
    height and width (lines of one label touch a little: a glyph box is taller than the
    line spacing): text drawn over text, an unreadable picture."""
    items = [(t, b) for t, b in zip(picture["texts"], picture["boxes"]) if t in wanted]
    items.sort(key=lambda item: item[1][0])
    out = []
    for i, (t1, (x1, y1, w1, h1)) in enumerate(items):
        for t2, (x2, y2, w2, h2) in items[i + 1:]:
            if x2 >= x1 + w1:
                break
            dx = min(x1 + w1, x2 + w2) - x2
            dy = min(y1 + h1, y2 + h2) - max(y1, y2)
            if dx > share * min(w1, w2) and dy > share * min(h1, h2):
                out.append((t1, t2))
    return out
