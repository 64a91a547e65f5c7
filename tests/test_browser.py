"""The plugin as users run it: headless Chromium against the real App.

``fiftyone app launch DATASET --remote`` serves a persistent dataset of the
18 kitchenware photos (one server per session, shared with
``test_app_http.py``). Playwright drives Debian's Chromium
(``/usr/bin/chromium``): the operator browser (backtick), the
``compute_saliency`` and ``sample_patches`` forms, Execute, and "Schedule"
with a ``fiftyone delegated launch`` worker. The database is checked after
each step. The screenshots the docs use (``docs/screenshots/``) are replaced
only by a passing test.

Run with ``pytest -m browser``.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time

import pytest

from tests.app_server import (
    CHROMIUM,
    CHROMIUM_ARGS,
    PLUGIN,
    ROOT,
    DelegatedWorker,
    kitchen_dataset,
    shared_app,
)

pytestmark = pytest.mark.browser

DATASET = "xpatch-app-browser"
SHOTS = os.path.join(ROOT, "docs", "screenshots")
N_IMAGES = 18
N_PATCHES = 4
UI_TIMEOUT = 60_000  # ms, one UI step
RUN_TIMEOUT = 240  # s, one operator run


@pytest.fixture(scope="module")
def dataset(kitchen):  # noqa: ARG001 - skips when the kitchenware package is absent
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is missing: apt-get install chromium (.ci/run installs it)")
    import fiftyone as fo

    ds = kitchen_dataset(DATASET)
    # What a user sets in the App's colour settings (palette button): colour by
    # value, so heatmaps show a colour scale rather than the field's colour.
    ds.app_config.color_scheme = fo.ColorScheme(
        color_by="value", colorscales=[{"path": "saliency", "name": "viridis"}], opacity=0.5)
    ds.save()
    yield ds
    if not ds.deleted:
        ds.delete()


@pytest.fixture(scope="module")
def app(request, dataset):
    return shared_app(request, dataset.name)


@pytest.fixture(scope="module")
def page(app, dataset):
    """One Chromium page on the dataset, kept across the module's tests."""
    from playwright.sync_api import sync_playwright

    profile = tempfile.mkdtemp(prefix="xpatch-chromium-")
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            profile,
            executable_path=CHROMIUM,
            args=CHROMIUM_ARGS,
            headless=True,
            viewport={"width": 1400, "height": 900},
        )
        try:
            pg = context.pages[0] if context.pages else context.new_page()
            pg.set_default_timeout(UI_TIMEOUT)
            # networkidle never fires in the App (it keeps an event stream open)
            pg.goto(f"{app.url}/datasets/{dataset.name}", wait_until="domcontentloaded")
            pg.wait_for_selector('[data-cy="fo-grid"]', timeout=120_000)
            pg.locator('[data-cy="looker"]').first.wait_for()
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


# -- UI helpers ------------------------------------------------------------------------


def _dismiss_popups(page) -> None:
    """Closes the App's "Explore Enterprise" card if it is showing."""
    dismiss = page.get_by_role("button", name="Dismiss", exact=True)
    if dismiss.count() and dismiss.first.is_visible():
        dismiss.first.click()


def _close_prompts(page) -> None:
    """Closes an operator prompt or output left open (by a failed test)."""
    for name in ("Done", "Cancel"):
        button = page.locator('[data-cy^="operators-prompt"]').get_by_role("button", name=name, exact=True)
        if button.count() and button.first.is_visible():
            button.first.click()


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


def _fill_saliency_form(page, form, kitchen, field: str) -> None:
    """Fills compute_saliency for the kitchenware classifier, Grad-CAM."""
    from playwright.sync_api import expect

    form.locator('xpath=.//p[normalize-space(.)="Model"]/following::*[@role="combobox"][1]').click()
    page.get_by_role("option", name="My saved classifier (.keras / .h5)").click()
    _fill(form, "Saved classifier", kitchen.model_path)
    _fill(form, "Class names", ",".join(kitchen.class_names))
    form.get_by_role("radio", name="Grad-CAM (class-discriminative)").check()
    form.get_by_role("radio", name="Predicted class").wait_for()  # the form re-resolved
    _fill(form, "Heatmap field", field)
    page.wait_for_timeout(1000)  # let the last re-resolve settle
    expect(_field(form, "Saved classifier")).to_have_value(kitchen.model_path)
    expect(form.get_by_role("radio", name="Grad-CAM (class-discriminative)")).to_be_checked()


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


# -- tests -----------------------------------------------------------------------------


def test_compute_saliency_from_the_operator_browser(page, dataset, kitchen, shots, app):
    from playwright.sync_api import expect

    form = _open_operator(page, "compute saliency", "Compute saliency")
    _fill_saliency_form(page, form, kitchen, "saliency")
    form.get_by_role("button", name="Execute", exact=True).click()

    # The run streams progress, reloads the dataset and shows its summary.
    summary = page.get_by_text(re.compile(rf"{N_IMAGES} processed, 0 already done, 0 failed"))
    summary.wait_for(timeout=RUN_TIMEOUT * 1000)
    assert _count(dataset, "saliency") == N_IMAGES, app.log()
    from xpatch_core.runs import get_run_info, read_heatmap

    info = get_run_info(dataset, "saliency")
    assert info["config"]["method"] == "gradcam" and info["results"]["processed"] == N_IMAGES
    maps = [read_heatmap(h) for h in dataset.values("saliency")]
    assert all(m is not None and m.ndim == 2 and m.max() > 0 for m in maps)

    page.get_by_role("button", name="Done", exact=True).click()
    # reload_dataset: the App's sidebar lists the new heatmap field
    checkbox = page.locator('[data-cy="sidebar"] [data-cy="checkbox-saliency"]')
    checkbox.wait_for()
    if not checkbox.locator("input").is_checked():
        checkbox.click()  # show the heatmaps
    expect(checkbox.locator("input")).to_be_checked()

    # The sample modal with the heatmap overlay.
    _dismiss_popups(page)
    page.locator('[data-cy="looker"]').first.click()
    page.locator('[data-cy="modal"]').wait_for()
    page.locator('[data-cy="sample-canvas"]').wait_for()
    expect(page.locator('[data-cy="modal"] [data-cy="checkbox-saliency"] input')).to_be_checked()
    page.wait_for_timeout(2500)  # the overlay is drawn on a canvas
    heat = os.path.join(shots, "app_heatmap.png")
    page.screenshot(path=heat)
    page.keyboard.press("Escape")
    page.locator('[data-cy="modal"]').wait_for(state="detached")
    _publish(heat, "app_heatmap.png")


def test_sample_patches_opens_the_patches_view(page, dataset, shots, app):
    if _count(dataset, "saliency") != N_IMAGES:
        pytest.skip("needs the heatmaps of the previous test")
    form = _open_operator(page, "sample patches", "Sample patches")
    assert _field(form, "Heatmap field").input_value() == "saliency"
    _fill(form, "Patches per image", str(N_PATCHES))
    page.wait_for_timeout(1000)
    form.get_by_role("button", name="Execute", exact=True).click()

    total = N_IMAGES * N_PATCHES
    # set_view: the grid now shows the patches view, best score first
    counts = page.locator('[data-cy="entry-counts"]')
    counts.filter(has_text=re.compile(rf"\b{total} patches\b")).wait_for(timeout=RUN_TIMEOUT * 1000)
    page.locator('[data-cy="sidebar-field-sample_id"]').wait_for()  # a patches view's field
    view_bar = page.locator('[data-cy="view-bar"]')
    view_bar.get_by_text("ToPatches", exact=True).first.wait_for(state="attached")
    view_bar.get_by_text("patches.confidence", exact=True).first.wait_for(state="attached")
    assert _count(dataset, "patches.detections") == total, app.log()
    from xpatch_core.runs import get_run_info

    info = get_run_info(dataset, "patches")
    assert info["type"] == "patches" and info["results"]["patches"] == total

    done = page.get_by_role("button", name="Done", exact=True)
    if done.count():
        done.first.click()
    _dismiss_popups(page)
    page.wait_for_timeout(2500)  # thumbnails
    grid = os.path.join(shots, "app_patches.png")
    page.screenshot(path=grid)
    _publish(grid, "app_patches.png")


def test_schedule_compute_saliency_in_the_background(page, dataset, kitchen, app):
    from fiftyone.operators.delegated import DelegatedOperationService
    from fiftyone.operators.executor import ExecutionRunState

    worker = DelegatedWorker()
    try:
        _close_prompts(page)
        page.click('[data-cy="btn-clear-view-bar"]')  # back to the images
        page.locator('[data-cy="entry-counts"]').filter(
            has_text=re.compile(rf"\b{N_IMAGES} samples\b")).wait_for()
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
