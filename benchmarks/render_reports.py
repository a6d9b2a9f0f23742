"""Render hwprune pages (report.html, a sweep's index.html) to PNG with headless Chromium, after checking
that each page fetches nothing (`hwprune.report.html.external_references`, the check tests/report/test_html.py
runs on every generated page).

    python benchmarks/render_reports.py runs/demo/report.html:docs/report-demo.png \
        runs/r18/report.html:docs/report-resnet18.png runs/demo-sweep/index.html:docs/sweep-demo.png

Chromium runs with host resolution mapped to nowhere and a dead proxy as well, so a reference the check
missed would render broken rather than reach the network. Needs Debian's `chromium` package.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from hwprune.report.files import rewrite_reports
from hwprune.report.html import external_references
from hwprune.report.schema import Report
from hwprune.report.sweep import Sweep, write_sweep


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    sys.exit("render_reports: no chromium on PATH (Debian: apt-get install chromium)")


def render(page: Path, png: Path, width: int = 1100, height: int = 4000) -> None:
    refs = external_references(page.read_text())
    if refs:
        sys.exit(f"render_reports: {page} would fetch or run {refs[:5]}; not rendering it")
    png.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as profile:
        cmd = [
            chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            f"--user-data-dir={profile}",
            "--host-resolver-rules=MAP * ~NOTFOUND",
            "--proxy-server=127.0.0.1:9",
            "--disable-background-networking",
            "--no-first-run",
            f"--window-size={width},{height}",
            f"--screenshot={png.resolve()}",
            page.resolve().as_uri(),
        ]
        subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    print(f"{page} -> {png}")


def refresh(page: Path) -> None:
    """Re-write the page (and its siblings) from its report.json / sweep.json with this checkout's code: the
    figures stay the run's, only the rendering is new."""
    if (page.parent / "sweep.json").exists() and page.name == "index.html":
        write_sweep(page.parent, Sweep.load(page.parent / "sweep.json"))
    elif (page.parent / "report.json").exists():
        rewrite_reports(page.parent, Report.load(page.parent / "report.json"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("pairs", nargs="+", metavar="PAGE.html:OUT.png")
    ap.add_argument("--width", type=int, default=1100)
    ap.add_argument("--height", type=int, default=4000, help="window height: the part of the page captured")
    ap.add_argument("--refresh", action="store_true", help="re-write each page from its JSON first (same figures)")
    a = ap.parse_args()
    for pair in a.pairs:
        page, _, png = pair.rpartition(":")
        if a.refresh:
            refresh(Path(page))
        render(Path(page), Path(png), a.width, a.height)


if __name__ == "__main__":
    main()
