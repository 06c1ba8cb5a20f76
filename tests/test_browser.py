"""The course as a learner sees it: JupyterLab in a real, headless browser.

`make lab` starts JupyterLab (through the repository's Makefile, on a free
loopback port with a token) on a copy of course/ in which workbook 05 holds
the model answers, filled in with ``attnlab.instructor.grading.filled`` exactly as the
grading tests fill it: the blank release raises NotImplementedError in every
exercise, so "run all cells and see no error" needs answers, and these are
the course's own. Workbook 01 stays blank, as released. Debian's Chromium,
driven by Playwright (no browser is downloaded), then

- opens JupyterLab where `make lab` points the learner and finds the start
  page, not marked as changed, linking every workbook, and its progress cell
  listing the workbooks;
- opens workbook 05, runs all its cells from the Run menu at the learner's
  size (the benchmark included, not the shrunken grading size), and finds
  every code cell run and no error or stderr output;
- moves the cache explorer's context slider with the keyboard and picks
  another model in its menu, and finds the plot redrawn and the numbers on
  the page equal to what ``attnlab.lesson.widgets.CacheExplorer`` computes for the
  same settings;
- presses nbgrader's Validate button, which reports success on workbook 05
  and, on the blank workbook 01, lists every visible test cell as failed.

Screenshots of each step go to tests/screenshots/ (the README links there),
each checked to be a real picture rather than a blank page. Skipped, with the
reason, where Chromium (``chromium`` on PATH, or the binary named by the
environment variable CHROMIUM) or Playwright is missing. `pytest -s` prints
how long each step took.
"""
from __future__ import annotations

import ast
import json
import os
import pathlib
import re
import shutil
import time

import nbformat
import pytest

from conftest import ROOT

# Debian's chromium; CHROMIUM=/path/to/chrome picks another build of it.
CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
if not (CHROMIUM and os.access(CHROMIUM, os.X_OK)):
    pytest.skip("Chromium is not installed (apt-get install chromium): no browser test", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed: no browser test")

from attnlab.instructor import grading
from attnlab.lesson import cache  # noqa: E402
from attnlab.lesson.widgets import CacheExplorer  # noqa: E402
from labserver import make_lab  # noqa: E402

sync_api.expect.set_options(timeout=30_000)  # a widget's round trip through the kernel, on a busy machine

SCREENSHOTS = ROOT / "tests" / "screenshots"  # the top level is fixed (COURSE.md)
EXPLORED = "05_cache_benchmark"  # run with the model answers; it holds the cache explorer
BLANK = "01_mha"  # validated as released
# Flags for Chromium as root in a container with no network: no sandbox (root),
# no GPU, and none of the background traffic (updates, sync, QUIC) it would try.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
STDERR = '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]'
RUN_TIMEOUT_S = 300  # run all of workbook 05: about 20 s on two idle cores
VALIDATE_TIMEOUT_S = 240  # nbgrader runs the whole notebook again


def notebook_path(assignment: str) -> str:
    return f"{assignment}/{assignment}.ipynb"


def shoot(target, name: str, tmp_path: pathlib.Path) -> pathlib.Path:
    """Screenshot ``target`` (a page or a locator), check it is not blank, and
    publish it as tests/screenshots/``name``."""
    tmp = tmp_path / name
    target.screenshot(path=str(tmp))
    assert_not_blank(tmp)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(tmp, SCREENSHOTS / f".{name}.part")
    os.replace(SCREENSHOTS / f".{name}.part", SCREENSHOTS / name)
    return tmp


def assert_not_blank(png: pathlib.Path):
    import matplotlib.image
    import numpy as np

    rgb = matplotlib.image.imread(str(png))[..., :3]  # (H, W, 3) floats in [0, 1]
    h, w, _ = rgb.shape
    assert h >= 100 and w >= 100, f"{png.name} is only {w} x {h} pixels"
    gray = rgb.mean(axis=-1)  # (H, W)
    drawn = float((np.abs(gray - np.median(gray)) > 0.1).mean())  # share of pixels clearly off the page colour
    colours = len(np.unique((rgb[::2, ::2] * 255).astype(np.uint8).reshape(-1, 3), axis=0))
    assert gray.std() > 0.02 and drawn > 0.01 and colours > 20, (
        f"{png.name} looks blank: std {gray.std():.3f}, {drawn:.1%} drawn, {colours} colours")


def summary_text(loc) -> str:
    return " ".join(loc.inner_text().split())


def expected_numbers(w: CacheExplorer) -> list[str]:
    """What the explorer's table shows for ``w``'s settings, cell by cell."""
    out = []
    for m in w.MECHANISMS:
        n = w.numbers[m]
        out += [cache.format_bytes(n["bytes_per_token"]), f"{n['ratio_to_mha']:.1f}×",
                cache.format_bytes(n["cache_bytes"]), f"{n['longest_context']:,}"]
    return out


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("browser")
    course = tmp / "course"
    shutil.copytree(ROOT / "course", course, ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    release = nbformat.read(ROOT / "course" / notebook_path(EXPLORED), as_version=4)
    source = nbformat.read(ROOT / "solutions" / notebook_path(EXPLORED), as_version=4)
    nbformat.write(grading.filled(release, source), course / notebook_path(EXPLORED))
    # JupyterLab's news and update prompts would cover the screenshots.
    settings = tmp / "user-settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    (settings / "notification.jupyterlab-settings").write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    # The kernels get what a learner's `make lab` gives them: no grading flag,
    # and matplotlib's notebook backend rather than the test suite's Agg.
    with make_lab(tmp, course=course, env={"MPLBACKEND": None, "NBGRADER_EXECUTION": None}) as server:
        yield server


@pytest.fixture(scope="module")
def page(lab):
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            pg = browser.new_page(viewport={"width": 1400, "height": 900})
            pg.set_default_timeout(60_000)
            pg.on("dialog", lambda dialog: dialog.accept())  # "leave the page?" when moving on
            yield pg
        finally:
            browser.close()


def open_notebook(page, lab, assignment: str):
    page.goto(f"{lab.base}/lab/tree/{notebook_path(assignment)}?token={lab.token}")
    # JupyterLab reopens the tabs of the last visit too (workbook 05's, before
    # workbook 01), and for a moment the old one is in view: its Validate
    # button would validate the wrong notebook. Wait for this one's tab.
    tab = page.locator(".lm-DockPanel-tabBar .lm-TabBar-tab.lm-mod-current .lm-TabBar-tabLabel",
                       has_text=re.compile(rf"^{re.escape(assignment)}\.ipynb$"))
    tab.wait_for()
    page.locator(".jp-NotebookPanel:visible .jp-Cell").first.wait_for()
    # The kernel has started once the status bar (which follows the tab in view) says Idle.
    page.locator(".jp-StatusBar-TextItem", has_text=re.compile(r"\| Idle$")).wait_for(timeout=120_000)
    current = page.locator(".lm-DockPanel-tabBar .lm-TabBar-tab.lm-mod-current")
    assert "jp-mod-dirty" not in (current.get_attribute("class") or ""), \
        f"{assignment}.ipynb opened already marked as changed"


@pytest.fixture(scope="module")
def ran(page, lab):
    """Workbook 05 opened and run from the Run menu: (page, seconds taken)."""
    start = time.monotonic()
    open_notebook(page, lab, EXPLORED)
    print(f"\nopen {EXPLORED} and start its kernel: {time.monotonic() - start:.1f} s")
    start = time.monotonic()
    page.locator(".lm-MenuBar-itemLabel").get_by_text("Run", exact=True).click()
    page.locator(".lm-Menu-itemLabel").get_by_text("Run All Cells", exact=True).click()
    prompts = page.locator(".jp-NotebookPanel:visible .jp-CodeCell .jp-InputPrompt")
    while True:
        texts = [t.strip() for t in prompts.all_text_contents()]
        if texts and all(re.fullmatch(r"\[\d+\]:", t) for t in texts):
            break  # every code cell ran
        if "[*]:" not in texts and page.locator(STDERR).count():
            break  # nothing queued and an error shown: run all stopped there
        assert time.monotonic() - start < RUN_TIMEOUT_S, f"run all did not finish in {RUN_TIMEOUT_S} s: {texts}"
        page.wait_for_timeout(500)
    page.locator(".jp-StatusBar-TextItem", has_text=re.compile(r"\| Idle$")).wait_for()
    return page, time.monotonic() - start


def test_make_lab_opens_on_the_start_page(page, lab, tmp_path):
    page.goto(f"{lab.base}/?token={lab.token}")  # the address make lab prints, less its path
    page.locator(".lm-DockPanel-tabBar .lm-TabBar-tab.lm-mod-current", has_text="START.ipynb").wait_for()
    page.locator(".jp-StatusBar-TextItem", has_text=re.compile(r"\| Idle$")).wait_for(timeout=120_000)
    current = page.locator(".lm-DockPanel-tabBar .lm-TabBar-tab.lm-mod-current")
    assert "jp-mod-dirty" not in (current.get_attribute("class") or ""), "START.ipynb opened marked as changed"
    links = [a.get_attribute("href") or "" for a in page.locator(".jp-RenderedMarkdown a").all()]
    workbooks = sorted(p.name for p in (ROOT / "course").iterdir() if p.is_dir())
    linked = [m[1] for h in links if (m := re.search(r"/files/(.+?\.ipynb)", h))]  # JupyterLab's resolved hrefs
    assert linked == [notebook_path(w) for w in workbooks], links
    page.locator(".jp-CodeCell .jp-InputArea-editor").first.click()
    page.keyboard.press("Shift+Enter")
    table = page.locator(".jp-CodeCell .jp-OutputArea-output", has_text=BLANK)
    table.wait_for()
    assert "not checked yet: run make check" in table.inner_text()
    shoot(page, "0-start-page.png", tmp_path)


def test_workbook_runs_clean(ran, tmp_path):
    page, seconds = ran
    nb = nbformat.read(ROOT / "course" / notebook_path(EXPLORED), as_version=4)
    code_cells = sum(c.cell_type == "code" for c in nb.cells)
    errors = page.locator(STDERR)
    assert errors.count() == 0, "error or stderr output:\n" + "\n---\n".join(errors.all_text_contents())[:3000]
    numbers = [int(m[1]) if (m := re.fullmatch(r"\[(\d+)\]:", t.strip())) else t.strip()
               for t in page.locator(".jp-NotebookPanel:visible .jp-CodeCell .jp-InputPrompt").all_text_contents()]
    assert numbers == list(range(1, code_cells + 1)), f"cells ran out of order or not at all: {numbers}"
    assert page.get_by_text("Error displaying widget").count() == 0
    figure = page.locator(".jp-CodeCell", has_text="bench.plot_png(result)").locator(".jp-OutputArea-output img")
    figure.scroll_into_view_if_needed()
    assert figure.evaluate("img => img.naturalWidth") > 300, "the benchmark figure did not render"
    shoot(page, "1-workbook-05-benchmark.png", tmp_path)
    print(f"run all cells of {EXPLORED}: {seconds:.1f} s")


def explorer_arguments(nb) -> dict:
    """The keyword arguments of the CacheExplorer(...) call in the notebook."""
    for cell in nb.cells:
        if cell.cell_type == "code" and "CacheExplorer(" in cell.source:
            for node in ast.walk(ast.parse(cell.source)):
                if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "CacheExplorer":
                    return {k.arg: ast.literal_eval(k.value) for k in node.keywords}
    raise AssertionError("no CacheExplorer(...) call in the notebook")


def test_cache_explorer_answers_its_controls(ran, tmp_path):
    page, _ = ran
    cell = page.locator(".jp-CodeCell", has_text="CacheExplorer(")
    cell.scroll_into_view_if_needed()
    summary, plot = cell.locator(".widget-html"), cell.locator("img.widget-image")

    def control(kind: str, label: str):
        return cell.locator(f".widget-{kind}", has=page.locator(".widget-label", has_text=re.compile(f"^{label}$")))

    context, model = control("hslider", "context"), control("dropdown", "model")
    # The same explorer in this process: the page must show the numbers it computes.
    mirror = CacheExplorer(**explorer_arguments(nbformat.read(ROOT / "course" / notebook_path(EXPLORED), as_version=4)))
    sync_api.expect(summary).to_contain_text(mirror.preset.value)
    before = summary_text(summary)
    for number in expected_numbers(mirror):
        assert number in before, f"{number} missing from the explorer's table: {before}"
    plot_before = plot.screenshot()
    shoot(cell.locator(".jp-OutputArea"), "2-cache-explorer.png", tmp_path)

    # One step left on the log2 context slider, from the keyboard, halves the context.
    context.locator(".noUi-handle").focus()
    page.keyboard.press("ArrowLeft")
    mirror.context.value /= 2
    tokens = int(mirror.context.value)
    sync_api.expect(context.locator(".widget-readout")).to_have_text(str(tokens))
    sync_api.expect(summary).to_contain_text(f"{mirror.batch.value} × {tokens:,} tokens")
    sync_api.expect(summary).to_contain_text(cache.format_bytes(mirror.numbers["MHA"]["cache_bytes"]))

    # Another model from the menu (on the explorer's default 24 GB, the bigger
    # Llama's weights do not fit: the page must say so exactly when they do not).
    other = "Llama-3-70B" if mirror.preset.value != "Llama-3-70B" else "Llama-3-8B"
    model.locator("select").select_option(other)
    mirror.preset.value = other
    sync_api.expect(control("hslider", "layers").locator(".widget-readout")).to_have_text(str(mirror.n_layers.value))
    sync_api.expect(summary).to_contain_text(f"{mirror.numbers['GQA']['longest_context']:,}")
    after = summary_text(summary)
    assert after != before
    for number in expected_numbers(mirror):
        assert number in after, f"{number} missing from the explorer's table: {after}"
    assert ("do not fit" in after) == (mirror.numbers["GQA"]["longest_context"] == 0), after
    deadline = time.monotonic() + 30  # the new PNG arrives just after the numbers
    while plot.screenshot() == plot_before:
        assert time.monotonic() < deadline, "the plot did not change"
        page.wait_for_timeout(250)
    shoot(cell.locator(".jp-OutputArea"), "3-cache-explorer-changed.png", tmp_path)


def validate(page):
    """Press nbgrader's Validate button (the one of the notebook in view); the result dialog."""
    page.locator("jp-button.validate-button").filter(visible=True).click()
    dialog = page.locator(".nbgrader-SuccessDialog, .nbgrader-ErrorDialog")
    dialog.wait_for(timeout=VALIDATE_TIMEOUT_S * 1000)
    return dialog


def close(dialog):
    dialog.locator("button.jp-Dialog-button").click()
    dialog.wait_for(state="detached")


def test_validate_passes_the_model_answers(ran, tmp_path):
    page, _ = ran
    dialog = validate(page)
    text = dialog.inner_text()
    assert "nbgrader-SuccessDialog" in dialog.get_attribute("class"), text[:3000]
    assert "Success! Your notebook passes all the tests." in text
    shoot(page, "4-validate-success.png", tmp_path)
    close(dialog)


def test_validate_lists_the_failing_visible_tests_of_a_blank_notebook(page, lab, tmp_path):
    start = time.monotonic()
    open_notebook(page, lab, BLANK)
    print(f"\nopen {BLANK} and start its kernel: {time.monotonic() - start:.1f} s")
    nb = nbformat.read(ROOT / "course" / notebook_path(BLANK), as_version=4)
    tests = [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade") and not c.metadata.nbgrader.get("solution")]
    dialog = validate(page)
    assert "nbgrader-ErrorDialog" in dialog.get_attribute("class"), dialog.inner_text()[:3000]
    failed = dialog.locator(".validation-failed")
    sync_api.expect(failed).to_have_count(1)
    text = failed.inner_text()
    assert text.count("The following cell failed:") == len(tests), text[:3000]
    assert "NotImplementedError" in text
    for cell in tests:  # each visible test is shown with its source
        assert cell.source.strip().splitlines()[0] in text
    shoot(page, "5-validate-blank-01.png", tmp_path)
    close(dialog)
