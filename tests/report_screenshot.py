"""Open a Snakemake report (`snakemake --report report.html`) in headless Chromium and take a
screenshot, of its start page or of one result opened as a click on it would open it.

    python tests/report_screenshot.py results/report.html report.png [--result results/report/job_timeline.png]

Also the report's embedded data (`var results = {...}`), for tests that check what it holds.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")


def find_chromium() -> str | None:
    return next((path for path in map(shutil.which, CHROMIUM_NAMES) if path), None)


def report_data(report_html: str | Path, name: str) -> dict | list:
    """One of the report's embedded variables (`results`, `categories`, `workflow_desc`, ...)."""
    text = Path(report_html).read_text()
    found = re.search(rf"<script id=\"[\w-]+\">\s*var {name} = (.*?);\s*</script>", text, re.DOTALL)
    if not found:
        raise ValueError(f"{report_html}: no variable '{name}'")
    return json.loads(found.group(1))


def _opening(result: str, category: str, subcategory: str) -> str:
    """A script that opens `result` in the report, beside the menu of its subcategory."""
    view = {"navbarMode": "subcategory", "category": category, "subcategory": subcategory, "resultPath": result}
    return (f"<script>setTimeout(function () {{ var view = {json.dumps(view)};"
            " var kind = results[view.resultPath].mime_type.startsWith('image/') ? 'img' : 'html';"
            " app.setView(Object.assign(view, {content: kind, contentPath: results[view.resultPath].data_uri}));"
            " }, 300);</script>")


def _headless(chromium: str, profile: str, size: tuple[int, int], *arguments: str, timeout: float) -> str:
    return subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                           "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
                           "--hide-scrollbars", f"--window-size={size[0]},{size[1]}", *arguments],
                          check=True, capture_output=True, text=True, timeout=timeout).stdout


def _window_frame(chromium: str, scratch: str, timeout: float) -> int:
    """How much taller headless Chromium's window is than the page it shows (its screenshot is of
    the window, the page's layout fills the viewport)."""
    probe = Path(scratch) / "probe.html"
    probe.write_text("<html><body><script>document.body.textContent = 'frame=' + (outerHeight - innerHeight)"
                     "</script></body></html>")
    found = re.search(r"frame=(\d+)", _headless(chromium, f"{scratch}/profile", (800, 600), "--dump-dom",
                                                probe.as_uri(), timeout=timeout))
    return int(found.group(1)) if found else 0


def rendered_dom(report_html: str | Path, chromium: str | None = None, timeout: float = 120) -> str:
    """The report's start page as Chromium has rendered it (its DOM after the report's scripts ran)."""
    chromium = chromium or find_chromium()
    with tempfile.TemporaryDirectory() as scratch:
        return _headless(chromium, f"{scratch}/profile", (1400, 900), "--dump-dom", "--virtual-time-budget=10000",
                         Path(report_html).resolve().as_uri(), timeout=timeout)


def screenshot(report_html: str | Path, png: str | Path, result: str | None = None, size: tuple[int, int] = (1400, 900),
               chromium: str | None = None, timeout: float = 120) -> Path:
    """Render the report (with `result` opened, if given) and write a PNG screenshot of `size`."""
    from PIL import Image

    chromium = chromium or find_chromium()
    if chromium is None:
        raise FileNotFoundError(f"no Chromium found (looked for {', '.join(CHROMIUM_NAMES)})")
    png = Path(png).resolve()
    with tempfile.TemporaryDirectory() as scratch:
        page = Path(report_html).resolve()
        if result is not None:
            categories = report_data(page, "categories")
            category, subcategory = next((c, s) for c, subs in categories.items() for s, paths in subs.items()
                                         if result in paths)
            text = page.read_text()
            end = text.rindex("</body>")
            page = Path(scratch) / "report.html"
            page.write_text(text[:end] + _opening(result, category, subcategory) + text[end:])
        window = (size[0], size[1] + _window_frame(chromium, scratch, timeout))
        shot = Path(scratch) / "screenshot.png"
        _headless(chromium, f"{scratch}/profile", window, f"--screenshot={shot}", "--virtual-time-budget=10000",
                  page.as_uri(), timeout=timeout)
        if not shot.exists():
            raise RuntimeError(f"Chromium wrote no screenshot of {report_html}")
        Image.open(shot).crop((0, 0, *size)).save(png, optimize=True)
    return png


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("report", type=Path)
    parser.add_argument("png", type=Path)
    parser.add_argument("--result", help="a result to open, by its path in the report (results/...)")
    parser.add_argument("--size", default="1400x900", help="window size, WIDTHxHEIGHT")
    arguments = parser.parse_args()
    width, height = map(int, arguments.size.split("x"))
    screenshot(arguments.report, arguments.png, arguments.result, (width, height))


if __name__ == "__main__":
    main()
