"""The plugin as users run it: headless Chromium against the real App.

``fiftyone app launch DATASET --remote`` serves a persistent dataset of the
18 kitchenware photos (one server per session, shared with
``test_app_http.py``). Playwright drives Debian's Chromium
(``/usr/bin/chromium``, never a downloaded browser) through what a user
does, and the database is checked after each step:

1. *Compute saliency* from the operator browser, with no colour setting
   touched: the sample modal shows the heatmap colour-mapped and smooth, and
   stronger on the plate than on the table (measured on the screenshot's
   pixels, :mod:`tests.overlay_pixels`);
2. *Sample patches* opens the patches view;
3. *Make patch dataset* from that view, and the App opens the new dataset;
4. *Compute patch embeddings*, *Build patch similarity index*, then the App's
   sort by similarity on a patch;
5. the xpatch panel on COCO photos: its table, its score histogram and,
   after *Evaluate* from the panel, its hit-rate plot are the run records;
6. a large view: the form shows the count and recommends the background;
7. "Schedule" with a ``fiftyone delegated launch`` worker.

The screenshots the docs use (``docs/screenshots/``) are replaced only by a
passing step. Run with ``pytest -m browser`` (``-s`` prints the measured
pixel figures).
"""

from __future__ import annotations

import math
import os
import re
import shutil
import tempfile
import time

import numpy as np
import pytest

from tests import overlay_pixels as px
from tests.app_server import (
    CHROMIUM,
    CHROMIUM_ARGS,
    PLUGIN,
    ROOT,
    DelegatedWorker,
    kitchen_dataset,
    run_operator,
    shared_app,
)

pytestmark = pytest.mark.browser

DATASET = "xpatch-app-browser"
PATCH_DATASET = "xpatch-app-browser-patches"
COCO_DATASET = "xpatch-app-coco"
BIG_DATASET = "xpatch-app-big"
SHOTS = os.path.join(ROOT, "docs", "screenshots")
N_IMAGES = 18
N_PATCHES = 4
N_COCO, N_COCO_PATCHES = 24, 8
UI_TIMEOUT = 60_000  # ms, one UI step
RUN_TIMEOUT = 240  # s, one operator run
VIEWPORT = {"width": 1400, "height": 900}

# The sample opened in the modal: a plate on a wooden table. PLATE_BOX lies
# inside the plate and everything outside PLATE_FRAME is wood (boxes checked
# once on the photo, as (x0, y0, x1, y1) fractions of the image).
PLATE = "0026.jpg"
PLATE_BOX = (0.25, 0.35, 0.68, 0.66)
PLATE_FRAME = (0.10, 0.20, 0.85, 0.80)


@pytest.fixture(scope="module")
def dataset(kitchen):  # noqa: ARG001 - skips when the kitchenware package is absent
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is missing: apt-get install chromium (.ci/run installs it)")
    ds = kitchen_dataset(DATASET)  # no colour scheme: the saliency run sets the default one
    yield ds
    if not ds.deleted:
        ds.delete()


@pytest.fixture(scope="module")
def app(request, dataset):
    return shared_app(request, dataset.name)


@pytest.fixture(scope="module")
def page(app, dataset):
    """One Chromium page, kept across the module's tests."""
    from playwright.sync_api import sync_playwright

    profile = tempfile.mkdtemp(prefix="xpatch-chromium-")
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True, viewport=VIEWPORT)
        try:
            pg = context.pages[0] if context.pages else context.new_page()
            pg.set_default_timeout(UI_TIMEOUT)
            _goto(pg, app, dataset.name)
            yield pg
        finally:
            context.close()
            shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def shots():
    """A scratch folder for screenshots; published to docs/ by passing tests."""
    d = tempfile.mkdtemp(prefix="xpatch-shots-")
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def coco(app, coco_dir, xception_weights):
    """24 COCO photos with their ground truth, EigenCAM heatmaps of the
    ImageNet Xception and 8 patches each, computed by the App server (the
    operators' HTTP route)."""
    import fiftyone as fo

    if fo.dataset_exists(COCO_DATASET):
        fo.delete_dataset(COCO_DATASET)
    ds = fo.Dataset.from_dir(dataset_type=fo.types.COCODetectionDataset, name=COCO_DATASET,
                             data_path=os.path.join(coco_dir, "images"),
                             labels_path=os.path.join(coco_dir, "annotations.json"),
                             label_types="detections", max_samples=N_COCO, shuffle=False, progress=False)
    ds.persistent = True
    run_operator(app, ds.name, "compute_saliency", {
        "model": "xception", "weights": xception_weights, "method": "eigencam", "field": "saliency",
        "storage": "database", "batch_size": 8})
    run_operator(app, ds.name, "sample_patches", {
        "heatmap_field": "saliency", "field": "patches", "n": N_COCO_PATCHES, "size_mode": "pixels", "size": 96,
        "seed": 0, "open_view": False})
    ds.reload()
    assert ds.count("patches.detections") == N_COCO * N_COCO_PATCHES
    yield ds
    if not ds.deleted:
        ds.delete()


# -- UI helpers ------------------------------------------------------------------------


def _goto(page, app, name: str) -> None:
    """Opens a dataset in the App (networkidle never fires: the App keeps an event stream open)."""
    page.goto(f"{app.url}/datasets/{name}", wait_until="domcontentloaded")
    page.wait_for_selector('[data-cy="fo-grid"]', timeout=120_000)
    page.locator('[data-cy="looker"]').first.wait_for()
    _dismiss_popups(page)


def _dismiss_popups(page) -> None:
    """Closes the App's "Explore Enterprise" card if it is showing."""
    dismiss = page.get_by_role("button", name="Dismiss", exact=True)
    if dismiss.count() and dismiss.first.is_visible():
        dismiss.first.click()


def _close_prompts(page) -> None:
    """Closes an operator prompt, its progress or its output."""
    for name in ("Done", "Cancel", "Close"):
        button = page.locator('[data-cy^="operators-prompt"]').get_by_role("button", name=name, exact=True)
        if button.count() and button.first.is_visible():
            button.first.click()


def _close_modal(page) -> None:
    """Closes the sample modal (Escape, once the focus has left the sidebar)."""
    modal = page.locator('[data-cy="modal"]')
    for _ in range(5):
        if not modal.count():
            return
        page.mouse.click(5, 5)  # outside the sidebar's checkboxes
        page.keyboard.press("Escape")
        page.wait_for_timeout(500)
    modal.wait_for(state="detached")


def _open_operator(page, query: str, label: str):
    """Opens an operator's form from the operator browser (backtick key)."""
    _dismiss_popups(page)
    _close_prompts(page)
    page.locator("body").press("Escape")
    page.keyboard.press("`")
    browser = page.locator('[data-cy="operators-browser"]')
    try:
        browser.wait_for(timeout=5_000)
    except Exception:  # noqa: BLE001 - the toolbar button is the other way in
        page.click('[data-cy="action-browse-operations"]')
        browser.wait_for()
    page.fill('[data-cy="operators-browser-search"]', query)
    page.locator('[data-cy="operators-browser"]').get_by_text(label, exact=True).first.wait_for()
    page.keyboard.press("Enter")
    form = page.locator('[data-cy="operators-prompt-modal"]')
    form.wait_for()
    form.get_by_text(label, exact=True).first.wait_for()
    return form


def _field(form, label: str):
    """The input under a form field's label."""
    return form.locator(f'xpath=.//p[normalize-space(.)="{label}"]/following::input[1]')


def _fill(form, label: str, value: str) -> None:
    from playwright.sync_api import expect

    box = _field(form, label)
    box.fill(value)
    expect(box).to_have_value(value)


def _pick_saved_model(page, form, path: str) -> None:
    form.locator('xpath=.//p[normalize-space(.)="Model"]/following::*[@role="combobox"][1]').click()
    page.get_by_role("option", name="My saved classifier (.keras / .h5)").click()
    _fill(form, "Saved classifier", path)


def _fill_saliency_form(page, form, kitchen, field: str) -> None:
    """Fills compute_saliency for the kitchenware classifier, Grad-CAM."""
    from playwright.sync_api import expect

    _pick_saved_model(page, form, kitchen.model_path)
    _fill(form, "Class names", ",".join(kitchen.class_names))
    form.get_by_role("radio", name="Grad-CAM (class-discriminative)").check()
    form.get_by_role("radio", name="Predicted class").wait_for()  # the form re-resolved
    _fill(form, "Heatmap field", field)
    page.wait_for_timeout(1000)  # let the last re-resolve settle
    expect(_field(form, "Saved classifier")).to_have_value(kitchen.model_path)
    expect(form.get_by_role("radio", name="Grad-CAM (class-discriminative)")).to_be_checked()


def _execute(form) -> None:
    form.get_by_role("button", name="Execute", exact=True).click()


def _wait_db(check, timeout: float = RUN_TIMEOUT, what: str = "the database") -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if check():
            return
        time.sleep(1.0)
    raise AssertionError(f"{what} did not reach the expected state within {timeout:.0f} s")


def _count(dataset, path: str) -> int:
    dataset.reload()
    field = path.split(".")[0]
    return dataset.count(path) if dataset.has_field(field) else 0


def _publish(src: str, name: str) -> None:
    os.makedirs(SHOTS, exist_ok=True)
    shutil.copyfile(src, os.path.join(SHOTS, name))


def _entry_count(page, pattern: str) -> None:
    page.locator('[data-cy="entry-counts"]').filter(has_text=re.compile(pattern)).wait_for(
        timeout=RUN_TIMEOUT * 1000)


def _plots(page, root: str, count: int) -> list:
    """The data of the ``count`` plotly figures under a selector, as plotly
    holds it (once they are drawn)."""
    page.wait_for_function(
        "([sel, n]) => { const p = document.querySelectorAll(sel + ' .js-plotly-plot');"
        " return p.length == n && Array.from(p).every(e => e.data && e.data.length); }", arg=[root, count])
    return page.evaluate(
        "(sel) => Array.from(document.querySelectorAll(sel + ' .js-plotly-plot')).map(e => e.data)", root)


# -- pixels ---------------------------------------------------------------------------


def _measure_overlay(on_path: str, off_path: str, box: dict, sample, opacity: float) -> dict:
    """Figures of the heatmap overlay in the modal (see :mod:`tests.overlay_pixels`)."""
    from xpatch_core.defaults import HEATMAP
    from xpatch_core.heatmaps import decode_network_map

    on, off = px.load_rgb(on_path), px.load_rgb(off_path)
    x0, y0, x1, y1 = px.image_rect(on, off, box)
    w, h = x1 - x0, y1 - y0
    shown, raw = on[y0:y1, x0:x1], off[y0:y1, x0:x1]  # the overlay and the raw image
    scale = px.colorscale(HEATMAP["colorscale"])
    stored = sample.saliency.map
    v, vn = px.resize_map(stored, (w, h)), px.resize_map(stored, (w, h), nearest=True)
    drawn = vn > 0  # the App leaves value 0 transparent
    colours = px.overlay_colours(shown, raw, opacity)
    fitted, residual = px.fitted_opacity(shown, raw, scale[np.rint(vn * 255).astype(int)], drawn)
    net = np.rint(decode_network_map(sample.saliency["network_map"]) * 255)
    blocky = px.composite(raw, px.resize_map(net, (w, h), nearest=True), opacity, scale)
    vh = px.value_from_colour(colours, np.abs(shown - raw).max(axis=2) > 2, scale)
    return {
        "rect": (x0, y0, w, h), "aspect": w / h, "image_aspect": sample.metadata.width / sample.metadata.height,
        "transparent": float(1 - drawn.mean()), "opacity_fitted": fitted, "residual": residual,
        "bands": px.colour_by_value(colours, v, drawn), "scale": scale,
        "jumps": px.unexplained_jumps(shown, raw), "jumps_blocky": px.unexplained_jumps(blocky, raw),
        "large_jumps": px.large_jumps(shown), "large_jumps_raw": px.large_jumps(raw),
        "plate": float(vh[px.region(vh.shape, PLATE_BOX)].mean()),
        "table": float(vh[~px.region(vh.shape, PLATE_FRAME)].mean()),
    }


def _check_overlay(m: dict, opacity: float) -> None:
    """Colour-mapped, smooth, stronger on the plate: the assertions of issue 14."""
    print("\noverlay figures:", {k: (round(v, 5) if isinstance(v, float) else v) for k, v in m.items()
                                 if k not in ("bands", "scale")})
    print("colour per value band:", [(round(v, 2), c.round().tolist(), round(px.hue(c))) for v, c, _ in m["bands"]])
    assert abs(m["aspect"] - m["image_aspect"]) < 0.02, m["rect"]
    # colour-mapped: the drawn colour follows the viridis scale band by band, from purple to yellow
    assert abs(m["opacity_fitted"] - opacity) < 0.05 and m["residual"] < 6
    assert len(m["bands"]) >= 6, m["bands"]
    for v, colour, _ in m["bands"]:
        assert np.abs(colour - m["scale"][int(round(v * 255))]).max() < 20, (v, colour)
    hues = [px.hue(c) for _, c, _ in m["bands"]]
    assert hues[0] - hues[-1] > 150, hues
    # smooth: the overlay adds almost no jump the photo does not have, far fewer than the
    # network's own map drawn as blocks would
    assert m["jumps"] < 0.001 and m["jumps"] < m["jumps_blocky"] / 5, (m["jumps"], m["jumps_blocky"])
    assert m["large_jumps"] <= m["large_jumps_raw"]
    # stronger on the plate than on the table
    assert m["plate"] > 0.7 and m["table"] < 0.4 and m["plate"] - m["table"] > 0.4, (m["plate"], m["table"])


# -- tests -----------------------------------------------------------------------------


def test_compute_saliency_from_the_operator_browser(page, dataset, kitchen, shots, app):
    """Issue 14: a default run, no colour setting touched: the modal shows the
    heatmap colour-mapped (viridis), smooth, and stronger on the plate."""
    from playwright.sync_api import expect

    from xpatch_core.defaults import HEATMAP
    from xpatch_core.runs import get_run_info, read_heatmap

    assert dataset.app_config.color_scheme is None  # nothing set by the test
    form = _open_operator(page, "compute saliency", "Compute saliency")
    _fill_saliency_form(page, form, kitchen, "saliency")
    _execute(form)

    # The run streams progress, reloads the dataset and shows its summary.
    summary = page.get_by_text(re.compile(rf"{N_IMAGES} processed, 0 already done, 0 failed"))
    summary.wait_for(timeout=RUN_TIMEOUT * 1000)
    assert _count(dataset, "saliency") == N_IMAGES, app.log()
    info = get_run_info(dataset, "saliency")
    assert info["config"]["method"] == "gradcam" and info["results"]["processed"] == N_IMAGES
    maps = [read_heatmap(h) for h in dataset.values("saliency")]
    assert all(m is not None and m.ndim == 2 and m.max() > 0 for m in maps)
    # the run gave the field a value colormap in the dataset's colour scheme
    scheme = dataset.app_config.color_scheme
    assert scheme.color_by == "value" and scheme.opacity == HEATMAP["opacity"]
    assert {"path": "saliency", "name": HEATMAP["colorscale"]} in [dict(c) for c in scheme.colorscales]

    page.get_by_role("button", name="Done", exact=True).click()
    checkbox = page.locator('[data-cy="sidebar"] [data-cy="checkbox-saliency"]')
    checkbox.wait_for()  # reload_dataset: the sidebar lists the new heatmap field
    if not checkbox.locator("input").is_checked():
        checkbox.click()  # show the heatmaps
    expect(checkbox.locator("input")).to_be_checked()

    # The sample modal on the plate, with and without its heatmap.
    names = [os.path.basename(p) for p in dataset.values("filepath")]
    page.locator('[data-cy="looker"]').nth(names.index(PLATE)).click()
    page.locator('[data-cy="modal"]').wait_for()
    canvas = page.locator('[data-cy="sample-canvas"]')
    canvas.wait_for()
    modal_box = page.locator('[data-cy="modal"] [data-cy="checkbox-saliency"]')
    expect(modal_box.locator("input")).to_be_checked()
    page.mouse.move(2, 2)  # no hover tooltip on the image
    page.wait_for_timeout(2500)  # the overlay is drawn on a canvas
    heat, raw = os.path.join(shots, "app_heatmap.png"), os.path.join(shots, "raw.png")
    page.screenshot(path=heat)
    box = canvas.bounding_box()
    modal_box.click()
    expect(modal_box.locator("input")).not_to_be_checked()
    page.mouse.move(2, 2)
    page.wait_for_timeout(1500)
    page.screenshot(path=raw)
    modal_box.click()
    _close_modal(page)

    sample = dataset.skip(names.index(PLATE)).first()
    _check_overlay(_measure_overlay(heat, raw, box, sample, scheme.opacity), scheme.opacity)
    _publish(heat, "app_heatmap.png")


def test_sample_patches_opens_the_patches_view(page, dataset, shots, app):
    if _count(dataset, "saliency") != N_IMAGES:
        pytest.skip("needs the heatmaps of the previous test")
    form = _open_operator(page, "sample patches", "Sample patches")
    assert _field(form, "Heatmap field").input_value() == "saliency"
    _fill(form, "Patches per image", str(N_PATCHES))
    page.wait_for_timeout(1000)
    _execute(form)

    total = N_IMAGES * N_PATCHES
    _entry_count(page, rf"\b{total} patches\b")  # set_view: the patches view, best score first
    page.locator('[data-cy="sidebar-field-sample_id"]').wait_for()  # a patches view's field
    view_bar = page.locator('[data-cy="view-bar"]')
    view_bar.get_by_text("ToPatches", exact=True).first.wait_for(state="attached")
    view_bar.get_by_text("patches.confidence", exact=True).first.wait_for(state="attached")
    assert _count(dataset, "patches.detections") == total, app.log()
    from xpatch_core.runs import get_run_info

    info = get_run_info(dataset, "patches")
    assert info["type"] == "patches" and info["results"]["patches"] == total

    _close_prompts(page)
    _dismiss_popups(page)
    page.wait_for_timeout(2500)  # thumbnails
    grid = os.path.join(shots, "app_patches.png")
    page.screenshot(path=grid)
    _publish(grid, "app_patches.png")


def test_make_patch_dataset_opens_the_new_dataset(page, dataset, app, request, tmp_path):
    """Issue 16: from the patches view, the operator makes a dataset of the
    patches and the App opens it."""
    import fiftyone as fo

    if _count(dataset, "patches.detections") != N_IMAGES * N_PATCHES:
        pytest.skip("needs the patches of the previous test")
    request.addfinalizer(lambda: fo.dataset_exists(PATCH_DATASET) and fo.delete_dataset(PATCH_DATASET))
    form = _open_operator(page, "make patch dataset", "Make patch dataset")
    form.get_by_text(f"Uses the {N_IMAGES * N_PATCHES} patches of this patches view ('patches')").wait_for()
    _fill(form, "New dataset name", PATCH_DATASET)
    _fill(form, "Output folder", str(tmp_path / "crops"))
    page.wait_for_timeout(1000)
    _execute(form)

    page.wait_for_url(re.compile(rf".*/datasets/{PATCH_DATASET}\b.*"), timeout=RUN_TIMEOUT * 1000)
    _entry_count(page, rf"\b{N_IMAGES * N_PATCHES} samples\b")
    new = fo.load_dataset(PATCH_DATASET)
    assert len(new) == N_IMAGES * N_PATCHES
    src_ids = set(dataset.values("id"))
    assert set(new.values("source_sample_id")) <= src_ids and len(set(new.values("source_sample_id"))) == N_IMAGES
    assert all(os.path.isfile(p) and p.startswith(str(tmp_path)) for p in new.values("filepath"))
    _close_prompts(page)


def test_curation_embeddings_and_sort_by_similarity(page, dataset, kitchen, shots, app):
    """Issue 17: patch embeddings and a similarity index from the operator
    browser, then the App's sort by similarity on a spoon patch."""
    from xpatch_core.runs import get_run_info

    total = N_IMAGES * N_PATCHES
    if _count(dataset, "patches.detections") != total:
        pytest.skip("needs the patches of the earlier tests")
    _goto(page, app, dataset.name)
    form = _open_operator(page, "compute patch embeddings", "Compute patch embeddings")
    _pick_saved_model(page, form, kitchen.model_path)
    page.wait_for_timeout(1000)
    _execute(form)
    page.get_by_text(f"{total} patches embedded on {N_IMAGES} samples, 0 already done, 0 failed").wait_for(
        timeout=RUN_TIMEOUT * 1000)
    dataset.reload()
    res = get_run_info(dataset, "patches_embedding")["results"]
    assert (res["processed"], res["patches"], res["failed"]) == (N_IMAGES, total, 0)
    _close_prompts(page)

    form = _open_operator(page, "similarity", "Build patch similarity index")
    page.wait_for_timeout(1000)
    _execute(form)
    page.get_by_text(f"Similarity index 'xpatch_patches_sim' over {total} patches", exact=False).first.wait_for(
        timeout=RUN_TIMEOUT * 1000)
    dataset.reload()
    assert "xpatch_patches_sim" in dataset.list_brain_runs()
    _close_prompts(page)
    _entry_count(page, rf"\b{total} patches\b")  # the operator opened the patches view

    # select the first spoon patch, then sort by similarity to it
    lookers = page.locator('[data-cy="looker"]')
    lookers.first.wait_for()
    labels = [lookers.nth(k).locator('[data-cy="tag-patches"]').inner_text() for k in range(12)]
    query = labels.index("spoon")
    lookers.nth(query).hover()
    lookers.nth(query).locator('[data-cy="looker-checkbox-"]').click()
    page.mouse.move(2, 400)
    page.click('[data-cy="action-sort-by-similarity"]')
    page.get_by_text("Show similar samples", exact=True).click()
    page.get_by_text("Completed", exact=True).first.wait_for(timeout=RUN_TIMEOUT * 1000)  # the search ran
    page.locator('button[aria-label="Show results"]').first.click(force=True)
    page.locator('[data-cy="view-bar"]').get_by_text("Select", exact=True).first.wait_for(state="attached")
    counts = page.locator('[data-cy="entry-counts"]')
    counts.filter(has_text=re.compile(r"\b\d+ patches\b")).wait_for()
    shown = int(re.search(r"(\d+) patches", counts.inner_text()).group(1))
    assert 8 <= shown < total
    page.wait_for_timeout(2500)  # thumbnails
    page.mouse.move(2, 400)
    nearest = [lookers.nth(k).locator('[data-cy="tag-patches"]').inner_text() for k in range(8)]
    assert nearest.count("spoon") >= 6, nearest  # the nearest patches are spoons too
    shot = os.path.join(shots, "app_curation.png")
    page.screenshot(path=shot)
    _publish(shot, "app_curation.png")


def test_the_panel_shows_the_run_records(page, app, coco, shots):
    """Issue 18: the xpatch panel's table, score histogram and (after
    *Evaluate* from the panel) hit-rate plot are the run records."""
    from xpatch_core import overview
    from xpatch_core.runs import get_run_info

    page.set_viewport_size({"width": 1600, "height": 1500})  # the whole panel in the screenshot
    try:
        _goto(page, app, coco.name)
        page.locator('[data-cy="new-panel-btn"]').first.click()
        page.locator('[data-cy^="new-panel-option"]').filter(has_text="xpatch runs").click()
        panel = page.locator('[data-cy="panel-content-xpatch_runs"]')
        panel.get_by_text("Not evaluated yet", exact=False).wait_for()

        # the table: one row per run, the run records' figures
        rows = panel.locator("table tr")
        cells = [rows.nth(k).locator("th, td").all_inner_texts() for k in range(rows.count())]
        assert cells[0] == ["Run", "Kind", "Status", "Samples", "Patches", "Time"]
        for key, row in zip(("saliency", "patches"), cells[1:], strict=True):
            r = overview.run_row(get_run_info(coco, key), coco)
            assert row == [r["run"], r["kind"], r["status"], r["samples"], str(r["patches"]), r["time"] or "-"]

        # the score histogram: the patch scores of the run, counted again here
        (hist,) = _plots(page, '[data-cy="panel-content-xpatch_runs"]', 1)
        x, y, width = np.array(hist[0]["x"]), np.array(hist[0]["y"]), np.array(hist[0]["width"])
        edges = np.append(x - width / 2, x[-1] + width[-1] / 2)
        edges[0] -= 1e-9  # the lowest score is the first edge: not lost to rounding
        scores = np.array(coco.values("patches.detections.confidence", unwind=True))
        assert y.sum() == len(scores) == N_COCO * N_COCO_PATCHES
        assert y.tolist() == np.histogram(scores, bins=edges)[0].tolist()

        # Evaluate from the panel: the form comes filled in; then Refresh shows the hit rates
        panel.get_by_role("button", name="Evaluate", exact=True).click()
        form = page.locator('[data-cy="operators-prompt-modal"]')
        form.get_by_text("Ground-truth objects", exact=True).wait_for()
        page.wait_for_timeout(1000)
        _execute(form)
        page.get_by_text("Object-hit rate (patch centres in a ground-truth box)").first.wait_for(
            timeout=RUN_TIMEOUT * 1000)
        _close_prompts(page)
        panel.get_by_role("button", name="Refresh").click()
        panel.get_by_text("Evaluated against", exact=False).wait_for()
        hits, _ = _plots(page, '[data-cy="panel-content-xpatch_runs"]', 2)
        coco.reload()
        ev = get_run_info(coco, "patches")["results"]["evaluation"]
        assert ev["gt_field"] == "ground_truth" and ev["patches"] == N_COCO * N_COCO_PATCHES
        classes = ev["per_class"][:12]
        assert len(classes) >= 5  # COCO photos show many classes
        assert [t["name"] for t in hits] == [name for _, name in overview.HIT_TRACES]
        for trace, (key, _) in zip(hits, overview.HIT_TRACES, strict=True):
            assert trace["x"] == ["all", *(c["label"] for c in classes)]
            expected = [ev[key], *(c[key] for c in classes)]
            assert all(math.isclose(a, b, abs_tol=1e-12) for a, b in zip(trace["y"], expected, strict=True)), key
        page.wait_for_timeout(1500)
        shot = os.path.join(shots, "app_panel.png")
        page.screenshot(path=shot)

        # the next step: the patches view
        panel.get_by_role("button", name="Open the patches view", exact=True).click()
        _entry_count(page, rf"\b{N_COCO * N_COCO_PATCHES} patches\b")
        page.locator('[data-cy="view-bar"]').get_by_text("ToPatches", exact=True).first.wait_for(state="attached")
    finally:
        page.set_viewport_size(VIEWPORT)
    _publish(shot, "app_panel.png")


def test_a_large_view_form_shows_the_count_and_recommends_the_background(page, app, kitchen, request):
    """Issue 18: on a view with many samples the form shows how many it will
    process and pre-selects "Schedule" (the plan is the library's, for the
    same parameters)."""
    import fiftyone as fo

    from plugin.saliency_ops import saliency_params
    from xpatch_core.defaults import SCALE
    from xpatch_core.offline import kitchenware_images
    from xpatch_core.runs import plan_run, run_kind

    if fo.dataset_exists(BIG_DATASET):
        fo.delete_dataset(BIG_DATASET)
    big = fo.Dataset(BIG_DATASET, persistent=True)
    request.addfinalizer(lambda: fo.dataset_exists(BIG_DATASET) and fo.delete_dataset(BIG_DATASET))
    photos = kitchenware_images()
    kwargs = saliency_params({"model": "saved", "model_path": kitchen.model_path, "method": "eigencam"})
    n = int(SCALE["background_above_samples"]) + 200
    plan = None
    while plan is None or not plan.background:  # enough samples for the known speed, if any
        big.add_samples([fo.Sample(filepath=photos[k % len(photos)]) for k in range(len(big), n)])
        plan = plan_run(run_kind("saliency", **kwargs), big)
        if plan.images_per_s:
            n = max(len(big) * 2, math.ceil(plan.images_per_s * SCALE["background_above_s"] * 1.5))
        assert len(big) <= 200_000, plan
    _goto(page, app, big.name)
    form = _open_operator(page, "compute saliency", "Compute saliency")
    _pick_saved_model(page, form, kitchen.model_path)
    lines = plan.lines()
    assert lines[0] == f"{len(big):,} of {len(big):,} samples to process (0 already done)."
    form.get_by_text(lines[0], exact=True).wait_for()
    form.get_by_text(re.compile(r"Recommended: schedule it")).wait_for()
    assert form.get_by_role("button", name="Schedule", exact=True).is_visible()  # pre-selected
    assert not form.get_by_role("button", name="Execute", exact=True).count()
    form.get_by_role("button", name="Cancel", exact=True).click()


def test_schedule_compute_saliency_in_the_background(page, dataset, kitchen, app):
    from fiftyone.operators.delegated import DelegatedOperationService
    from fiftyone.operators.executor import ExecutionRunState

    worker = DelegatedWorker()
    try:
        _goto(page, app, dataset.name)
        _entry_count(page, rf"\b{N_IMAGES} samples\b")
        form = _open_operator(page, "compute saliency", "Compute saliency")
        _fill_saliency_form(page, form, kitchen, "saliency_bg")
        # The arrow beside Execute offers "Schedule" (legacy orchestrators allowed).
        form.locator('xpath=.//button[normalize-space(.)="Execute"]/following-sibling::button[1]').click()
        page.get_by_text("Run this operation in the background").click()
        form.get_by_role("button", name="Schedule", exact=True).click()
        page.get_by_text("Operation successfully scheduled").wait_for()

        dos = DelegatedOperationService()
        uri = f"{PLUGIN}/compute_saliency"
        ops: list = []

        def finished() -> bool:
            nonlocal ops
            ops = dos.list_operations(operator=uri, dataset_name=dataset.name)
            return bool(ops) and all(op.run_state in ExecutionRunState.TERMINAL_STATES for op in ops)

        try:
            _wait_db(finished, what="the delegated operation")
        except AssertionError:
            raise AssertionError(f"{[(o.run_state, o.status) for o in ops]}\nworker:\n{worker.log()}") from None
        for op in ops:
            assert op.run_state == ExecutionRunState.COMPLETED, f"{op.run_state}: {op.result}\n{worker.log()}"
            assert op.started_at is not None and op.completed_at is not None
            assert op.context.request_params["params"]["field"] == "saliency_bg"
        # progress reported through ctx.set_progress is kept on the operation
        assert any(op.status is not None and op.status.progress == 1.0 and op.status.label for op in ops), \
            [op.status and vars(op.status) for op in ops]
    finally:
        worker.stop()

    assert _count(dataset, "saliency_bg") == N_IMAGES
    from xpatch_core.runs import get_run_info

    assert get_run_info(dataset, "saliency_bg")["results"]["processed"] == N_IMAGES
