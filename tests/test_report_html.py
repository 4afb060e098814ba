"""The HTML report: one self-contained page (images embedded, no scripts, no links out) with the summary,
the figures, failures, every cell, the environment and the suite file; rendered in headless Chromium to
check that every image loads. Chromium is installed by scripts/ensure-chromium.sh (the test skips without)."""

from __future__ import annotations

import base64
import html
import json
import re
import shutil
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import pytest
from _grid_fakes import erf_runner, write_suite

from attn_zoo.cli import main
from attn_zoo.grid import InlineExecutor, load_suite, run_suite


class Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images, self.tags, self.links = [], [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append(tag)
        if tag == "img":
            self.images.append(attrs)
        for key in ("src", "href"):
            if key in attrs:
                self.links.append(attrs[key])


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("html")
    suite_path = write_suite(tmp, seeds=2, extra='"knobs.window" = [2, 4]\n"model.img_size" = [32, 64]')
    suite = load_suite(suite_path)
    broken = suite.cells[0].cell_id

    def run(cell, artifact_dir):
        if cell.cell_id == broken:
            raise RuntimeError("<script>alert('x')</script> broke")
        return erf_runner(cell, artifact_dir)

    store = tmp / "out" / "fake.sqlite"
    run_suite(suite, store, executor=InlineExecutor(run), progress=False)
    out = tmp / "report"
    assert main(["report", str(store), "--html", "--out", str(out), "--json"]) == 0
    return out / "report.html", suite_path


def test_page_is_self_contained_with_every_section(report, capsys):
    page_path, suite_path = report
    text = page_path.read_text()
    page = Page()
    page.feed(text)
    assert len(page.images) == len(list(page_path.parent.glob("*.png"))) >= 9
    for img in page.images:
        assert img["src"].startswith("data:image/png;base64,") and img["alt"]
        assert base64.b64decode(img["src"].split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert "script" not in page.tags and "link" not in page.tags  # nothing runs, nothing is fetched
    assert all(link.startswith(("data:", "#")) for link in page.links)
    for anchor in ("summary", "figures", "failures", "cells", "environment", "suite"):
        assert f'id="{anchor}"' in text
    plain = html.unescape(text)
    assert suite_path.read_text().strip() in plain  # the suite file, verbatim
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; broke" in text  # escaped, not injected
    assert re.search(r"<td>torch</td><td>\d+\.\d+", text)  # the environment table
    assert "failed: 1" in text and "ok: 11" in text


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


PROBE = """<script>window.addEventListener('load', function () {
  var rows = [];
  document.querySelectorAll('img').forEach(function (img) { rows.push([img.complete, img.naturalWidth]); });
  var pre = document.createElement('pre'); pre.id = 'probe'; pre.textContent = JSON.stringify(rows);
  document.body.appendChild(pre);
});</script>"""


@pytest.mark.skipif(chromium() is None, reason="no chromium here: run scripts/ensure-chromium.sh")
def test_every_image_loads_in_headless_chromium(report, tmp_path):
    page_path, _ = report
    # a copy with a probe that lists each image's natural width once the page has loaded
    probe = tmp_path / "probe.html"
    probe.write_text(page_path.read_text().replace("</body>", PROBE + "</body>"))
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tempfile.mkdtemp(prefix='chromium_')}",
    ]
    dom = subprocess.run(
        [chromium(), *flags, "--virtual-time-budget=5000", "--dump-dom", probe.as_uri()],
        capture_output=True,
        text=True,
        timeout=180,
    ).stdout
    found = re.search(r'<pre id="probe">(.*?)</pre>', dom)
    assert found, dom[-2000:]
    rows = json.loads(html.unescape(found.group(1)))
    assert len(rows) == Page.count_images(page_path) and all(done and width > 0 for done, width in rows), rows
    shot = tmp_path / "page.png"
    subprocess.run(
        [
            chromium(),
            *flags,
            "--hide-scrollbars",
            "--window-size=1200,2400",
            f"--screenshot={shot}",
            page_path.as_uri(),
        ],
        capture_output=True,
        timeout=180,
    )
    assert shot.is_file() and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000


def _count_images(path: Path) -> int:
    page = Page()
    page.feed(path.read_text())
    return len(page.images)


Page.count_images = staticmethod(_count_images)
