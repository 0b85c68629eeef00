"""``fae report``: one self-contained HTML page of a run; its slice browser in a real Chromium."""

import base64
import csv
import io
import json
import re
import shutil

import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from fae.data.preprocess import PrepConfig
from fae.data.synthetic import make_synthetic
from fae.evaluation import load_slice_maps
from fae.methods.base import load_method
from fae.workflow import RunSpec, evaluate_run, train_or_resume

from conftest import fae


@pytest.fixture(scope="module")
def reported(tmp_path_factory):
    """A thresholding run on tiny synthetic data (bright lesions it finds), evaluated,
    predicted and reported from the command line."""
    root = tmp_path_factory.mktemp("report")
    data = root / "data"
    make_synthetic(data, 4, seed=2, modalities=("t1",), resolution_mm=2,
                   kinds=("hyperintense",), progress=False)  # fmt: skip
    spec = RunSpec(data / "datalist.csv", "t1", "threshold", prep=PrepConfig(size=64))
    train_or_resume(spec, root / "run", cache_dir=root / "cache", progress=False)
    evaluate_run(root / "run", data / "datalist.csv", root / "eval", cache_dir=root / "cache",
                 progress=False)  # fmt: skip
    r = fae("predict", "--run", root / "run", "--out", root / "pred", data / "datalist.csv",
            "--cache-dir", root / "cache")  # fmt: skip
    assert r.returncode == 0, r.stderr
    r = fae("report", root / "run", "--eval", root / "eval", "--pred", root / "pred",
            "--out", root / "report.html")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "wrote" in r.stdout
    return root


def page_data(path):
    text = path.read_text()
    found = re.search(
        r'<script id="report-data" type="application/json">(.*?)</script>', text, re.S
    )
    return text, json.loads(found.group(1))


def png(uri):
    assert uri.startswith("data:image/png;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))))


def test_report_shows_every_scan_on_the_runs_one_scale(reported):
    text, data = page_data(reported / "report.html")
    for heading in ("Run", "Training", "Calibrated thresholds", "Metrics", "Pixel precision-recall",
                    "Predicted scans", "Slices"):  # fmt: skip
        assert f"<h2>{heading}</h2>" in text
    # self-contained: nothing is fetched
    assert not re.findall(r'(?:src|href)="(?!data:)', text)
    est = load_method(reported / "run", progress=False)
    (panel,) = data["panels"]
    assert (panel["vmin"], panel["vmax"]) == pytest.approx(est.display_range())
    assert panel["vmin"] == pytest.approx(est.thresholds(0.05)[0])
    slices, maps = load_slice_maps(reported / "eval" / "maps.npz")
    names = [s["name"] for s in data["scans"]]
    with (reported / "pred" / "scores.csv").open() as fh:
        predicted = [row["name"] for row in csv.DictReader(fh)]
    assert names == [f"{n} (evaluated)" for n in slices.subject_ids] + [
        f"{n} (predicted)" for n in predicted
    ]
    for i, scan in enumerate(data["scans"][: len(slices.subject_ids)]):
        rows = np.flatnonzero(slices.subject == i)
        rows = rows[np.argsort(slices.slice_index[rows])]
        assert len(scan["images"]) == len(rows) == len(scan["overlays"][0])
        assert scan["labels"] == [f"z={z}" for z in slices.slice_index[rows]]
        k = scan["start"]
        assert slices.segs[rows[k]].sum() == slices.segs[rows].sum(axis=(1, 2)).max()
        # the overlay is the map where it reaches the calibrated threshold, inside the brain
        alpha = png(scan["overlays"][0][k])[..., 3] > 0
        row = rows[k]
        expected = np.rot90((maps[row] >= panel["vmin"]) & slices.masks[row])
        np.testing.assert_array_equal(alpha, expected)
        assert expected.any(), "thresholding flags the bright lesion"
        grey = png(scan["images"][k])
        np.testing.assert_array_equal(grey, np.round(np.rot90(slices.images[row]) * 255))
        # the ground truth's outline: lesion pixels on its edge, none inside, none outside
        outline = png(scan["truth"][k])[..., 3] > 0
        seg = np.rot90(slices.segs[row])
        assert outline.any() and not (outline & ~seg).any()
        assert not (outline & ndimage.binary_erosion(seg)).any()
        no_lesion = [j for j, r in enumerate(rows) if not slices.segs[r].any()]
        assert all(scan["truth"][j] is None for j in no_lesion)
    # a predicted scan: its slices with brain, in its own space, flagged where its map is
    scan = data["scans"][-1]
    assert len(scan["images"]) == len(scan["overlays"][0]) > 0
    assert all(t is None for t in scan["truth"])
    amap = nib.load(reported / "pred" / f"{predicted[-1]}_anomaly.nii.gz")
    values = nib.as_closest_canonical(amap).get_fdata()
    flagged = [(values[:, :, z] >= panel["vmin"]).sum() for z in range(values.shape[2])]
    alpha = [int((png(o)[..., 3] > 0).sum()) for o in scan["overlays"][0]]
    assert sum(alpha) == sum(flagged) > 0 and max(alpha) == max(flagged)


def test_report_bad_input_is_one_line(reported, tmp_path):
    old = tmp_path / "old-eval"  # an evaluation without its maps
    old.mkdir()
    for name in ("metrics.json", "per_subject.csv"):
        shutil.copy(reported / "eval" / name, old / name)
    for args, message in (
        (["--out", tmp_path / "r.html"], "give a run folder"),
        ([reported / "nope", "--out", tmp_path / "r.html"], "run not found"),
        ([reported / "run", "--eval", tmp_path, "--out", tmp_path / "r.html"], "metrics.json"),
        ([reported / "run", "--eval", old, "--out", tmp_path / "r.html"], "maps.npz: not found"),
    ):
        r = fae("report", *args)
        assert r.returncode == 2 and message in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
        assert not (tmp_path / "r.html").exists()


BROWSER = shutil.which("chromium") and shutil.which("chromedriver")


@pytest.mark.skipif(not BROWSER, reason="Chromium and ChromeDriver not installed (make browser)")
def test_report_in_a_headless_browser(reported, tmp_path):
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--window-size=1200,1400",
                 f"--user-data-dir={tmp_path / 'profile'}"):  # fmt: skip
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    try:
        driver.get((reported / "report.html").as_uri())
        body = driver.find_element(By.TAG_NAME, "body")
        base = driver.find_element(By.CSS_SELECTOR, "#panels img.base")
        start, first_src = int(body.get_attribute("data-slice")), base.get_attribute("src")
        # the keyboard moves one slice, and the picture with it
        key = Keys.ARROW_LEFT if start > 0 else Keys.ARROW_RIGHT
        body.send_keys(key)
        moved = int(body.get_attribute("data-slice"))
        assert abs(moved - start) == 1 and base.get_attribute("src") != first_src
        # the slider, used as a person would (focus, Home key), goes to the first slice
        slider = driver.find_element(By.ID, "slice")
        slider.send_keys(Keys.HOME)
        assert body.get_attribute("data-slice") == "0"
        assert driver.find_element(By.ID, "where").text.startswith("z=")
        slider.send_keys(*[Keys.ARROW_RIGHT] * start)
        assert int(body.get_attribute("data-slice")) == start
        names = [e.text for e in driver.find_elements(By.CSS_SELECTOR, "#panels .name")]
        assert names == ["image", "threshold"]
        # the map's panel: image, map, truth stacked
        stack = driver.find_element(By.CSS_SELECTOR, "#panels .panel:nth-child(2) .stack")
        driver.execute_script("arguments[0].scrollIntoView()", stack)
        shot = np.asarray(Image.open(io.BytesIO(stack.screenshot_as_png)).convert("RGB"))
        (tmp_path / "browser.png").write_bytes(stack.screenshot_as_png)
        driver.find_element(By.ID, "show-map").click()  # the map off: the colour goes
        plain = np.asarray(Image.open(io.BytesIO(stack.screenshot_as_png)).convert("RGB"))

        def coloured(img):  # red to yellow over grey: much more red than blue
            return int(((img[..., 0].astype(int) - img[..., 2]) > 100).sum())

        assert coloured(shot) > 50 and coloured(plain) < coloured(shot) / 10
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, errors
    finally:
        driver.quit()
