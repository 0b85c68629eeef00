"""A PNG of a ``fae report`` page's slice browser, as headless Chromium draws it (the README's
picture). Needs Debian's chromium and chromium-driver (``make browser``) and selenium.

    .venv/bin/python benchmarks/screenshot.py REPORT.html --scan TCGA_CS_6666 --png docs/report.png
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--window-size=1250,1200")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("report", type=Path)
    parser.add_argument("--scan", default="", help="the first scan whose name contains this")
    parser.add_argument("--slices", type=int, default=0, help="slices to move from its start")
    parser.add_argument("--png", type=Path, required=True)
    args = parser.parse_args()
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    with tempfile.TemporaryDirectory() as profile:
        for flag in (*FLAGS, f"--user-data-dir={profile}"):
            options.add_argument(flag)
        driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
        try:
            driver.get(args.report.resolve().as_uri())
            scans = Select(driver.find_element(By.ID, "scan"))
            names = [o.text for o in scans.options]
            scans.select_by_index(next(i for i, n in enumerate(names) if args.scan in n))
            slider = driver.find_element(By.ID, "slice")
            driver.execute_script(
                "arguments[0].value = Number(arguments[0].value) + arguments[1];"
                "arguments[0].dispatchEvent(new Event('input'));",
                slider,
                args.slices,
            )
            browser = driver.find_element(By.ID, "browser")
            driver.execute_script("arguments[0].scrollIntoView()", browser)
            args.png.write_bytes(browser.screenshot_as_png)
        finally:
            driver.quit()
    print(f"wrote {args.png}")


if __name__ == "__main__":
    main()
