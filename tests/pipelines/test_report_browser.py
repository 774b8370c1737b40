"""The HTML report in a real browser: headless Chromium loads every picture of a report made from a real run.

Needs the `chromium` binary (Debian: `apt-get install -y chromium`); without it the test is
skipped with that instruction. No network is used: the page and its pictures are local files.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from pipelines.evaluation import EvaluateConfig, evaluate, write
from tests.pipelines.test_evaluate import tiny_runs

pytestmark = pytest.mark.timeout(300)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not on PATH; install it with: apt-get install -y chromium"
)

# Appended to a copy of the page: after the load event, record which <img> elements have no pixels.
CHECK_SCRIPT = """<script>
window.addEventListener("load", () => {
  const images = [...document.images];
  const broken = images.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.getAttribute("src"));
  const out = document.createElement("pre");
  out.id = "image-check";
  out.textContent = JSON.stringify({total: images.length, broken: broken});
  document.body.appendChild(out);
});
</script>"""


def _chromium(profile, *args) -> subprocess.CompletedProcess:
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
    ]
    return subprocess.run([CHROMIUM, *flags, *args], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def report(corpus_and_index, tmp_path_factory):
    runs = tiny_runs(tmp_path_factory, corpus_and_index[1])
    out = tmp_path_factory.mktemp("browser-report")
    ev = evaluate(EvaluateConfig(runs=tuple(runs), out=str(out), metrics=()))
    write(ev)
    return out


@needs_chromium
def test_chromium_loads_every_image_of_the_report(report, tmp_path):
    page = (report / "report.html").read_text()
    expected = len(re.findall(r"<img ", page))
    assert expected == 2 * (
        7 + 3 * 3
    )  # 2 images x (input, plain, 4 arms, truth + 3 retrieving arms x K = 3 neighbours)
    check = report / "check.html"  # beside the page, so its relative src paths resolve the same way
    check.write_text(page.replace("</body>", CHECK_SCRIPT + "</body>"))
    done = _chromium(tmp_path / "profile", "--virtual-time-budget=10000", "--dump-dom", check.as_uri())
    found = re.search(r'<pre id="image-check">([^<]*)</pre>', done.stdout)
    assert found, f"the check script did not run; chromium said: {done.stderr[-2000:]}"
    result = json.loads(found.group(1))
    assert result == {"total": expected, "broken": []}


@needs_chromium
def test_the_rendered_page_shows_the_pictures_not_a_blank(report, tmp_path):
    shot = tmp_path / "report.png"
    done = _chromium(
        tmp_path / "profile", f"--screenshot={shot}", "--window-size=1400,1600", (report / "report.html").as_uri()
    )
    assert shot.is_file(), f"no screenshot; chromium said: {done.stderr[-2000:]}"
    pixels = np.asarray(Image.open(shot).convert("RGB")).reshape(-1, 3)
    # Text and table rules are gray; the pictures (colourful test images and reconstructions) add saturated colours.
    saturated = (pixels.max(axis=1).astype(int) - pixels.min(axis=1)) > 60
    assert saturated.mean() > 0.01, (
        f"only {saturated.mean():.4f} of the screenshot is coloured: pictures did not render"
    )
