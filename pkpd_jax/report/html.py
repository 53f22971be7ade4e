"""One self-contained HTML report (inline CSS, images embedded as base64 PNG) for a clinical
pharmacologist: the dose answers first, then the data, the model, the parameters, diagnostics,
VPCs, the coverage-vs-dose curves and the assumptions behind the answers.

[`write_report`][] reads what earlier stages wrote: the fit directory (``fit.json``,
``summary.json``, ``data.csv``, ``trace.png``, ``pairs.png``, ``vpc.png``,
``individual_fits.png``) and the output directory (``trial_curves.json`` and
``coverage_<scenario>.png`` from `pkpd_jax.trials.dose_search.answer_questions`,
``data_overview.png`` from the data overview, optionally ``model_selection.json``). Anything
missing is said to be missing on the page, never silently dropped.

The page carries a tiny script that, once loaded, records on ``<body>`` how many images decoded
(``data-images-ok``/``data-images-total``) and whether the answers table is laid out
(``data-answers-visible``): a headless browser's DOM dump then shows that the page renders.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import json
from collections.abc import Mapping, Sequence
from pathlib import Path


__all__ = ["write_report", "render_check", "find_browser", "ASSUMPTIONS"]

ASSUMPTIONS = (
    "The structural model, covariate model and residual-error model are those of the fit; the answers "
    "are only as good as that model (see the diagnostics and VPCs).",
    "Parameter uncertainty: each posterior draw gives one coverage curve; the 90% interval of a dose is "
    "the 5th-95th percentile of the per-draw optimal doses on the grid.",
    "Between-subject variability: log-normal (logit-normal for fractions) with the fit's ω, independent "
    "between parameters; new random effects for every virtual subject.",
    "Covariates of a population 'like the studied one' are resampled jointly from the study subjects; in "
    "the body-weight scenario BW is uniform on 70-140 kg (other covariates resampled); in the "
    "no-co-medication scenario COMED = 0 for everyone. Covariate effects are extrapolated beyond the "
    "studied weights with the fitted allometric exponents.",
    "Dosing: one dose at the start of each interval, given as in the study (the study's infusion "
    "duration), at steady state; perfect adherence, no missed or late doses.",
    "Suppression means the biomarker stays below the threshold over the whole steady-state dosing "
    "interval (its maximum on a fine time grid, including the first minutes after a dose).",
    "Doses are on a grid (0.5 mg once daily, 5 mg once weekly); an answer is the smallest grid dose that "
    "meets the target for the posterior-median coverage curve.",
    "Residual (measurement) error is not part of the suppression criterion: the criterion is on the "
    "true biomarker, not on a measured value.",
)

_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:0;color:#1d2733;background:#f6f7f9}
main{max-width:1120px;margin:0 auto;padding:24px 32px 64px;background:#fff}
h1{font-size:26px;margin:8px 0 4px}h2{font-size:20px;border-bottom:2px solid #dde3ea;padding-bottom:4px;
margin-top:36px}h3{font-size:16px;margin:20px 0 6px}
table{border-collapse:collapse;margin:8px 0 12px;font-size:13.5px}
th,td{border:1px solid #d5dbe2;padding:4px 9px;text-align:right}th{background:#eef2f6}
td.l,th.l{text-align:left}tr:nth-child(even) td{background:#fafbfc}
.answers td.dose{font-weight:600;font-size:15px}.note{color:#8a5a00;font-size:12px}
.meta{color:#5b6875;font-size:13px}.missing{color:#9b2c2c;font-style:italic}
figure{margin:10px 0 18px}figure img{max-width:100%;border:1px solid #e3e7ec}
figcaption{font-size:12.5px;color:#5b6875}ul{line-height:1.5}
"""

_CHECK_SCRIPT = """
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.setAttribute('data-images-total', String(imgs.length));
  document.body.setAttribute('data-images-ok', String(ok));
  var t = document.getElementById('answers-table');
  var r = t ? t.getBoundingClientRect() : null;
  document.body.setAttribute('data-answers-visible', r && r.height > 0 && r.width > 0 ? '1' : '0');
});
"""

_QUESTIONS = (
    ("daily", "study", "once daily, population as studied"),
    ("weekly", "study", "once weekly, population as studied"),
    ("daily", "bw70_140", "once daily, body weight 70-140 kg"),
    ("weekly", "bw70_140", "once weekly, body weight 70-140 kg"),
    ("daily", "nocomed", "once daily, no co-medication"),
    ("weekly", "nocomed", "once weekly, no co-medication"),
)
_SUFFIX = {"study": "", "bw70_140": "_bw70_140", "nocomed": "_nocomed"}


def _esc(x) -> str:
    return html.escape(str(x))


def _fmt(v, digits: int = 4) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return _esc(v)


def _img(path: Path, caption: str) -> str:
    path = Path(path)
    if not path.exists():
        return f'<p class="missing">{_esc(caption)}: not available ({_esc(path.name)} was not written).</p>'
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (
        f'<figure><img alt="{_esc(caption)}" src="data:image/png;base64,{data}">'
        f"<figcaption>{_esc(caption)}</figcaption></figure>"
    )


def _table(header: Sequence[str], rows: Sequence[Sequence], *, left: int = 1, attrs: str = "") -> str:
    th = "".join(f'<th class="{"l" if i < left else ""}">{_esc(h)}</th>' for i, h in enumerate(header))
    body = []
    for row in rows:
        cells = []
        for i, v in enumerate(row):
            cls = "l" if i < left else ""
            if isinstance(v, tuple):  # (html, css class)
                cells.append(f'<td class="{cls} {v[1]}">{v[0]}</td>')
            else:
                cells.append(f'<td class="{cls}">{_fmt(v)}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table {attrs}><thead><tr>{th}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _load_json(path: Path) -> dict | None:
    try:
        return json.loads(Path(path).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _interval(a: Mapping) -> str:
    lo, hi = a.get("dose_interval") or (None, None)
    return f"{_fmt(lo)} – {_fmt(hi) if hi is not None else 'above grid'}"


# ---------------------------------------------------------------------------- sections
def _answers_section(answers: Mapping, details: Mapping | None) -> str:
    rows = []
    for reg, sc, label in _QUESTIONS:
        row = [label]
        for target in (90, 75):
            key = f"{reg}_{target}{_SUFFIX[sc]}"
            a = answers.get(key)
            if a is None:
                row += [("<span class='missing'>not computed</span>", ""), "–"]
                continue
            dose = a.get("dose")
            unit = "" if dose is None else " mg"
            text = "not reached" if dose is None else f"{dose:g}{unit}"
            row += [(text, "dose"), _interval(a)]
        d90 = answers.get(f"{reg}_90{_SUFFIX[sc]}", {}).get("dose")
        d75 = answers.get(f"{reg}_75{_SUFFIX[sc]}", {}).get("dose")
        row.append("–" if d90 is None or d75 is None else f"{d90 - d75:g} mg ({(d90 - d75) / d90:.0%})")
        rows.append(row)
    table = _table(
        [
            "question",
            "dose, 90% of subjects",
            "90% interval",
            "dose, 75% of subjects",
            "90% interval",
            "75% vs 90%: lower by",
        ],
        rows,
        attrs='id="answers-table" class="answers"',
    )
    notes = []
    for key, a in (details or {}).items():
        if isinstance(a, Mapping) and a.get("note"):
            notes.append(f"<li><b>{_esc(key)}</b>: {_esc(a['note'])}</li>")
    note_html = f"<p class='note'>Notes:</p><ul class='note'>{''.join(notes)}</ul>" if notes else ""
    return f"<h2 id='answers'>Dose answers</h2>{table}{note_html}"


def _data_section(fit_dir: Path, out_dir: Path, data=None) -> str:
    parts = ["<h2>Data</h2>"]
    try:
        from ..data import read_nonmem, summarize
        from .overview import cohort_table

        df = read_nonmem(fit_dir / "data.csv") if data is None else data
        parts.append(f"<p>{_esc(summarize(df))}</p>")
        cohorts = cohort_table(df)
        cols = cohorts.columns
        parts.append(_table(cols, [list(r.values()) for r in cohorts.to_dicts()], left=0))
    except Exception as e:  # the report must still be written; say what is missing
        parts.append(f"<p class='missing'>data summary not available: {_esc(e)}</p>")
    for where in (out_dir, fit_dir):
        if (where / "data_overview.png").exists():
            parts.append(_img(where / "data_overview.png", "Observed concentrations and biomarker by dose"))
            break
    return "".join(parts)


def _model_section(fit_dir: Path, out_dir: Path, summary: Mapping | None, selection: Mapping | None) -> str:
    parts = ["<h2>Model</h2>"]
    meta = _load_json(fit_dir / "fit.json") or {}
    model = (summary or {}).get("model") or f"{meta.get('pk')} + {meta.get('pd')}"
    cov = (summary or {}).get("covariates")
    parts.append(
        f"<p>Structural model: <b>{_esc(model)}</b>; covariate effects: "
        f"{_esc(', '.join(cov) if cov else meta.get('covariates', 'none'))}.</p>"
    )
    if selection is None:
        for where in (out_dir, fit_dir):
            selection = _load_json(where / "model_selection.json")
            if selection is not None:
                break
    if selection:
        parts.append("<h3>Model selection</h3>")
        rows = []
        for k, v in selection.items():
            rows.append([k, json.dumps(v) if isinstance(v, Mapping | list) else v])
        parts.append(_table(["item", "value"], rows, left=2))
    else:
        parts.append("<p class='meta'>Model selection: no record (the model was given by the user).</p>")
    return "".join(parts)


def _params_section(summary: Mapping | None, truth: Mapping | None) -> str:
    parts = ["<h2>Parameters</h2>"]
    params = (summary or {}).get("params") or {}
    if not params:
        return parts[0] + "<p class='missing'>no parameter summary (summary.json) in the fit directory.</p>"
    true_vals = {}
    if truth:
        true_vals.update(truth.get("population", {}))
        true_vals.update({k: v for k, v in truth.get("covariates", {}).items() if isinstance(v, int | float)})
        true_vals.update(truth.get("omega", {}))
        true_vals.update({k: v for k, v in truth.get("residual", {}).items() if isinstance(v, int | float)})
    header = ["parameter", "mean", "2.5%", "median", "97.5%", "R-hat", "ESS bulk"] + (
        ["truth"] if truth else []
    )
    rows = []
    for name, s in params.items():
        row = [
            name,
            s.get("mean"),
            s.get("q2.5"),
            s.get("q50"),
            s.get("q97.5"),
            s.get("rhat"),
            s.get("ess_bulk"),
        ]
        if truth:
            row.append(true_vals.get(name))
        rows.append(row)
    parts.append(_table(header, rows))
    parts.append(
        "<p class='meta'>Typical values are for a 70 kg subject without co-medication; ω are between-subject "
        "SDs on the log scale; σ are residual-error SDs.</p>"
    )
    return "".join(parts)


def _diagnostics_section(fit_dir: Path, summary: Mapping | None) -> str:
    parts = ["<h2>Diagnostics</h2>"]
    s = summary or {}
    params = s.get("params") or {}
    rhats = [v.get("rhat") for v in params.values() if isinstance(v.get("rhat"), int | float)]
    ess = [v.get("ess_bulk") for v in params.values() if isinstance(v.get("ess_bulk"), int | float)]
    rows = [
        ["sampler", s.get("sampler")],
        ["chains × draws", f"{s.get('chains', '?')} × {s.get('draws_per_chain', '?')}"],
        ["divergent transitions", s.get("divergences")],
        ["max R-hat", max(rhats) if rhats else None],
        ["min bulk ESS", min(ess) if ess else None],
        ["wall time (s)", s.get("wall_s")],
    ]
    parts.append(_table(["item", "value"], rows, left=2))
    warns = s.get("warnings") or []
    if warns:
        parts.append("<ul class='note'>" + "".join(f"<li>{_esc(w)}</li>" for w in warns) + "</ul>")
    else:
        parts.append("<p class='meta'>No sampler warnings.</p>")
    parts.append(_img(fit_dir / "trace.png", "Trace plots of the population parameters"))
    parts.append(_img(fit_dir / "pairs.png", "Pair plot of key parameters"))
    return "".join(parts)


def _vpc_section(fit_dir: Path) -> str:
    return (
        "<h2>Visual predictive checks</h2>"
        + _img(fit_dir / "vpc.png", "VPC: observed percentiles against model-predicted intervals")
        + _img(fit_dir / "individual_fits.png", "Individual fits")
    )


def _coverage_section(out_dir: Path, curves: Mapping | None) -> str:
    parts = ["<h2>Coverage against dose</h2>"]
    if curves:
        c0 = (curves.get("curves") or [{}])[0]
        parts.append(
            f"<p class='meta'>Threshold {_fmt(curves.get('threshold'))}; {curves.get('n_draws')} "
            f"posterior draws × {c0.get('n_virtual')} virtual subjects per draw; seed "
            f"{curves.get('seed')}. Curves: posterior median with 50% and 90% bands over draws; "
            "dashed lines mark the answers, bars at the bottom their "
            "90% intervals.</p>"
        )
    labels = {
        "study": "Population as studied",
        "bw70_140": "Body weight uniform 70-140 kg",
        "nocomed": "No co-medication",
    }
    for sc, label in labels.items():
        parts.append(
            f"<h3>{_esc(label)}</h3>" + _img(out_dir / f"coverage_{sc}.png", f"Coverage vs dose: {label}")
        )
    return "".join(parts)


def _assumptions_section(extra: Sequence[str]) -> str:
    items = "".join(f"<li>{_esc(a)}</li>" for a in (*ASSUMPTIONS, *extra))
    return f"<h2>Assumptions</h2><ul>{items}</ul>"


def _extra_section(sec) -> str:
    if isinstance(sec, Mapping):
        title, body, images = (
            sec.get("title", ""),
            sec.get("html", sec.get("text", "")),
            sec.get("images", ()),
        )
        is_html = "html" in sec
    else:
        title, body, images = sec[0], sec[1], (sec[2] if len(sec) > 2 else ())
        is_html = False
    content = body if is_html else "".join(f"<p>{_esc(p)}</p>" for p in str(body).split("\n\n") if p)
    imgs = "".join(_img(Path(p), Path(p).stem.replace("_", " ")) for p in images)
    return f"<h2>{_esc(title)}</h2>{content}{imgs}"


# ---------------------------------------------------------------------------- entry point
def write_report(
    out_dir,
    *,
    fit_dir,
    answers: Mapping,
    extra_sections: Sequence = (),
    title: str = "In-silico trial: dose answers",
    truth: Mapping | str | Path | None = None,
    model_selection: Mapping | None = None,
    assumptions: Sequence[str] = (),
    filename: str = "report.html",
    data=None,
) -> Path:
    """Write ``out_dir/report.html`` and return its path.

    **Arguments:**

    - `out_dir`: where the report goes; also where ``trial_curves.json``,
      ``coverage_<scenario>.png`` and ``data_overview.png`` are looked for.
    - `fit_dir`: the fit directory (summary, data and fit plots).
    - `answers`: the dose answers, ``{"daily_90": {"dose", "dose_interval"}, ...}``.
    - `extra_sections`: more sections, each ``{"title", "html" or "text", "images": [png paths]}``
      or ``(title, text[, images])`` (e.g. the model-selection details of the pipeline).
    - `truth`: optional known truth (dict or ``truth.json``) shown next to the estimates.
    - `model_selection`: optional record shown in the model section (default: a
      ``model_selection.json`` in `out_dir` or `fit_dir`).
    - `assumptions`: more assumptions to list.
    - `data`: the fitted study as a frame returned by [`read_nonmem`][pkpd_jax.data.read_nonmem]
      (default: read ``fit_dir/data.csv``).
    """
    out = Path(out_dir)
    fit = Path(fit_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = _load_json(fit / "summary.json")
    curves = _load_json(out / "trial_curves.json")
    if truth is not None and not isinstance(truth, Mapping):
        truth = _load_json(Path(truth))
    details = (curves or {}).get("answers")
    stamp = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    threshold = (curves or {}).get("threshold")
    intro = (
        f"<p class='meta'>Generated {stamp} from the fit in <code>{_esc(fit)}</code>. "
        + (
            f"Suppression: biomarker below {_fmt(threshold)} over the whole steady-state dosing interval. "
            if threshold is not None
            else ""
        )
        + "Doses in mg; intervals are 90% intervals from parameter uncertainty.</p>"
    )
    body = "".join(
        [
            f"<h1>{_esc(title)}</h1>",
            intro,
            _answers_section(answers, details),
            _data_section(fit, out, data),
            _model_section(fit, out, summary, model_selection),
            _params_section(summary, truth),
            _diagnostics_section(fit, summary),
            _vpc_section(fit),
            _coverage_section(out, curves),
            *(_extra_section(s) for s in extra_sections),
            _assumptions_section(assumptions),
        ]
    )
    page = (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{_esc(title)}</title><style>{_CSS}</style></head>"
        f"<body><main>{body}</main><script>{_CHECK_SCRIPT}</script></body></html>"
    )
    path = out / filename
    path.write_text(page, encoding="utf-8")
    return path


# ---------------------------------------------------------------------------- rendering check
_BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")


def find_browser() -> str | None:
    """Path of a Chromium-family browser on PATH, or None."""
    import shutil

    return next((p for p in map(shutil.which, _BROWSERS) if p), None)


def render_check(page, screenshot=None, *, browser: str | None = None, timeout: float = 120.0) -> dict:
    """Open `page` in headless Chromium, return what its check script recorded
    (``{"data-images-total", "data-images-ok", "data-answers-visible"}``) plus ``"dom"`` (the
    rendered HTML), and save a full-page screenshot to `screenshot` (default: ``report.png``
    beside the page). Raises `RuntimeError` when no browser is installed or it fails."""
    import re
    import subprocess

    browser = browser or find_browser()
    if browser is None:
        raise RuntimeError("no headless browser found: install the 'chromium' system package")
    page = Path(page)
    shot = Path(screenshot) if screenshot is not None else page.with_suffix(".png")
    common = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        "--run-all-compositor-stages-before-draw",
        "--virtual-time-budget=5000",
    ]
    url = page.resolve().as_uri()
    dom = subprocess.run([*common, "--dump-dom", url], capture_output=True, text=True, timeout=timeout)
    if dom.returncode != 0:
        raise RuntimeError(f"{browser} --dump-dom failed: {dom.stderr[-1000:]}")
    run = subprocess.run(
        [*common, "--window-size=1280,3200", f"--screenshot={shot}", url],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if run.returncode != 0 or not shot.exists():
        raise RuntimeError(f"{browser} --screenshot failed: {run.stderr[-1000:]}")
    m = re.search(r"<body([^>]*)>", dom.stdout)
    attrs = dict(re.findall(r'(data-[a-z-]+)="([^"]*)"', m.group(1))) if m else {}
    return {**attrs, "dom": dom.stdout, "screenshot": str(shot)}
