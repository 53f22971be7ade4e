"""The HTML report renders in a real browser: the answers table is laid out and every image decodes.

Marked ``slow``. Builds a report from a fit-like directory (see tests/test_trials.py) and a small
trial, opens it in headless Chromium (the ``chromium`` package, or Playwright's Chromium when
installed), reads back the DOM that the page's own check script annotates, and saves a screenshot
``report.png`` beside ``report.html``. Skips, saying why, when no browser is installed.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from pkpd_jax.report.html import find_browser, render_check, write_report
from pkpd_jax.report.overview import study_overview
from pkpd_jax.trials.dose_search import answer_questions


pytestmark = pytest.mark.slow


def _render_playwright(page, shot) -> str:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch()
        tab = b.new_page(viewport={"width": 1280, "height": 1000})
        tab.goto(page.resolve().as_uri())
        tab.wait_for_load_state("load")
        assert tab.locator("#answers-table").is_visible()
        tab.screenshot(path=str(shot), full_page=True)
        html = tab.content()
        b.close()
    return html


def test_report_renders_answers_and_images(tmp_path):
    import importlib.util

    browser = find_browser()
    has_playwright = importlib.util.find_spec("playwright") is not None
    if browser is None and not has_playwright:
        pytest.skip(
            "no headless browser: install the 'chromium' system package (or playwright + its Chromium)"
        )
    from test_trials import make_fit_dir

    fit_dir = make_fit_dir(tmp_path / "fit", n_draws=8)
    out = tmp_path / "run"
    study_overview(fit_dir / "data.csv", out)
    answers = answer_questions(fit_dir, n_virtual=64, n_draws=4, seed=0, progress=False, out_dir=out)
    page = write_report(
        out,
        fit_dir=fit_dir,
        answers=answers,
        extra_sections=[{"title": "Model selection details", "text": "example text"}],
    )
    shot = out / "report.png"
    if browser:
        check = render_check(page, shot, browser=browser)
        dom = check.pop("dom")
        attrs = {k: v for k, v in check.items() if k.startswith("data-")}
    else:
        dom = _render_playwright(page, shot)
        body = re.search(r"<body([^>]*)>", dom).group(1)
        attrs = dict(re.findall(r'(data-[a-z-]+)="([^"]*)"', body))
    assert attrs.get("data-answers-visible") == "1", attrs
    total, ok = int(attrs["data-images-total"]), int(attrs["data-images-ok"])
    assert total >= 4 and ok == total, attrs  # data overview + three coverage plots at least
    assert 'id="answers-table"' in dom and "daily_90" not in dom  # labelled rows, not raw keys
    for key in ("once daily, population as studied", "once weekly, no co-medication"):
        assert key in dom
    dose = answers["daily_90"]["dose"]
    assert f"{dose:g} mg" in dom

    # the screenshot shows a page (not blank): many distinct colours, dark text on light
    import matplotlib.image as mpimg

    assert shot.exists() and shot.stat().st_size > 20_000
    img = mpimg.imread(shot)[..., :3]
    assert img.std() > 0.05 and len(np.unique((img[::7, ::7] * 255).astype(int).reshape(-1, 3), axis=0)) > 50
    (out / "render.json").write_text(json.dumps(attrs))
