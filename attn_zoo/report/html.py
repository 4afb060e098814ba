"""One static HTML page per store: plots (embedded as base64 PNG, so the page opens from disk with no
server and can be mailed as one file), the summary table, failures, every cell, the environment and the
suite file. No JavaScript, no external resources."""

from __future__ import annotations

import base64
import datetime
import html
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from attn_zoo.report.figures import Figure
from attn_zoo.report.tables import CELL_COLUMNS, NOT_CONVERGED, NOT_CONVERGED_NOTE, has_unconverged, summary_rows

CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 0 auto; max-width: 1100px;
       padding: 24px; color: #1f2328; line-height: 1.45; }
h1 { font-size: 1.6em; margin-bottom: 0.1em; }
h2 { border-bottom: 1px solid #d0d7de; padding-bottom: 4px; margin-top: 2em; }
.meta { color: #59636e; font-size: 0.9em; }
.badges span { display: inline-block; padding: 2px 10px; margin: 4px 6px 4px 0; border-radius: 12px; font-size: 0.85em;
               background: #eef1f4; }
.badges .ok { background: #dafbe1; } .badges .bad { background: #ffebe9; }
table { border-collapse: collapse; font-size: 0.85em; margin: 8px 0; }
th, td { border: 1px solid #d0d7de; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f6f8fa; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 18px 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eaeef2; }
figcaption { color: #59636e; font-size: 0.88em; margin-top: 4px; }
pre { background: #f6f8fa; padding: 12px; overflow-x: auto; font-size: 0.82em; border-radius: 6px; }
details summary { cursor: pointer; color: #0969da; }
nav a { margin-right: 14px; }
"""


def _e(value: Any) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "-"
    return html.escape(str(value))


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]], numeric_from: int = 99) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = "".join(
            f'<td class="num">{_e(v)}</td>' if i >= numeric_from else f"<td>{_e(v)}</td>" for i, v in enumerate(row)
        )
        body.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _image(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f"data:image/png;base64,{data}"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if value != value:
            return "-"
        return f"{value:.4g}" if abs(value) < 1e5 else f"{value:.4e}"
    return "-" if value is None else str(value)


def render_html(
    *,
    suite: str,
    description: str,
    store_path: str,
    counts: Mapping[str, int],
    frame: pd.DataFrame,
    all_cells: pd.DataFrame,
    figures: Sequence[Figure],
    runs: Sequence[Mapping[str, Any]],
    suite_toml: str,
    paired_html: str = "",
) -> str:
    """The page as a string (see :func:`write_html_report`); ``paired_html``: the paired comparison."""
    now = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    total = sum(counts.values())
    badges = "".join(
        f'<span class="{"ok" if s == "ok" else "bad" if s not in ("pending", "running") else ""}">{_e(s)}: {n}</span>'
        for s, n in sorted(counts.items(), key=lambda kv: (kv[0] != "ok", kv[0]))
    )
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>attn_zoo report: {_e(suite)}</title><style>{CSS}</style></head><body>",
        f"<h1>Suite <code>{_e(suite)}</code></h1>",
        f"<p>{_e(description)}</p>" if description else "",
        f'<p class="meta">Store <code>{_e(store_path)}</code>, {total} cells; report made {_e(now)} by attn_zoo.</p>',
        f'<div class="badges">{badges}</div>',
        '<nav><a href="#summary">Summary</a><a href="#figures">Figures</a><a href="#failures">Failures</a>'
        '<a href="#cells">Cells</a><a href="#environment">Environment</a><a href="#suite">Suite file</a></nav>',
        '<h2 id="summary">Summary</h2>',
    ]
    if len(frame):
        headers, rows = summary_rows(frame)
        first_num = 3 if "variant" in headers else 2
        parts.append(_table(headers, rows, numeric_from=first_num))
        parts.append(
            '<p class="meta">One row per configuration; several seeds show mean ± 95% confidence interval. '
            "Latency and throughput are the median of every timed call of the configuration's seeds (pooled as "
            "repeated measurements) ± the half-width of that median's 95% interval.</p>"
        )
        if has_unconverged(rows):
            parts.append(f'<p class="meta">{_e(NOT_CONVERGED_NOTE)}</p>')
        if "code" in headers:
            parts.append(
                '<p class="meta">This store mixes code versions (column <code>code</code>): rows of different '
                "code are never aggregated together.</p>"
            )
    else:
        parts.append("<p>No cell has finished yet.</p>")
    if paired_html:
        parts.append('<h2 id="paired">Paired differences</h2>' + paired_html)

    parts.append('<h2 id="figures">Figures</h2>')
    if not figures:
        parts.append("<p>No figures: the finished cells do not vary anything a figure could show.</p>")
    for fig in figures:
        parts.append(
            f'<figure><img src="{_image(fig.path)}" alt="{_e(fig.title)}">'
            f"<figcaption><b>{_e(fig.title)}.</b> {_e(fig.caption)}</figcaption></figure>"
        )

    parts.append('<h2 id="failures">Failures</h2>')
    bad = all_cells[~all_cells["status"].isin(["ok", "pending", "running"])] if len(all_cells) else all_cells
    if len(bad):
        rows = [[r.label, r.variant or "", r.seed, r.status, _step(r), r.reason] for r in bad.itertuples()]
        parts.append(_table(["mechanism", "variant", "seed", "status", "step", "reason"], rows))
        parts.append('<p class="meta">Re-run these with <code>attn-zoo run SUITE --retry-failed</code>.</p>')
    else:
        parts.append("<p>None.</p>")

    parts.append('<h2 id="cells">Cells</h2>')
    if len(all_cells):
        cols = [c for c in (*CELL_COLUMNS, "cell_wall_s") if c in all_cells]
        rows = [[_fmt(v) for v in row] for row in all_cells[cols].itertuples(index=False)]
        if "latency_median_ms" in cols and "latency_fwd_converged" in all_cells:  # mark unconverged timings
            at = cols.index("latency_median_ms")
            for row, flag in zip(rows, all_cells["latency_fwd_converged"]):
                if flag == 0:
                    row[at] += NOT_CONVERGED
        parts.append(
            f"<details><summary>{len(all_cells)} cells, one row per seed</summary>{_table(cols, rows, 4)}</details>"
        )

    parts.append('<h2 id="environment">Environment</h2>')
    if runs:
        env = runs[-1].get("environment") or {}
        parts.append(_table(["key", "value"], [[k, v] for k, v in env.items()]))
        devices = sorted(set(all_cells["device"].dropna())) if "device" in all_cells else []
        if devices:
            parts.append(f'<p class="meta">Cells ran on: {_e(", ".join(devices))}</p>')
        run_rows = [
            [r["run_id"], _when(r.get("started_at")), _when(r.get("finished_at")), r.get("command") or ""] for r in runs
        ]
        parts.append("<h3>Runs</h3>" + _table(["run", "started", "finished", "command"], run_rows))

    parts.append('<h2 id="suite">Suite file</h2>')
    parts.append(f"<pre>{_e(suite_toml)}</pre>" if suite_toml else "<p>Not recorded.</p>")
    parts.append("</body></html>")
    return "\n".join(p for p in parts if p)


def _step(row) -> str:
    step = getattr(row, "diverged_step", None)
    return "-" if step is None or step != step else str(int(step))


def _when(ts: float | None) -> str:
    if not ts:
        return "-"
    return datetime.datetime.fromtimestamp(ts).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def write_html_report(store, out_path: str | Path, figures: Sequence[Figure], baseline: str | None = None) -> Path:
    """Write the report page of ``store`` (a :class:`~attn_zoo.grid.store.Store`) to ``out_path``;
    ``baseline``: the mechanism paired differences are taken to (default: the suite's, else the first)."""
    from attn_zoo.report.paired_report import paired_section, suite_baseline

    out_path = Path(out_path)
    runs = store.runs()
    last = runs[-1] if runs else {}
    paired = paired_section(store.frame(), store.path.parent, baseline or suite_baseline(store))
    page = render_html(
        suite=last.get("suite") or store.path.stem,
        description=_description(last.get("suite_toml") or ""),
        store_path=store.path.name,
        counts=store.counts(),
        frame=store.frame(samples=True),
        all_cells=store.frame(status=None),
        figures=figures,
        runs=runs,
        suite_toml=last.get("suite_toml") or "",
        paired_html=paired.html(_table) if paired else "",
    )
    from attn_zoo.paths import write_text

    return write_text(out_path, page)  # atomic, after the one write check


def _description(toml_text: str) -> str:
    import tomllib

    try:
        return str(tomllib.loads(toml_text).get("suite", {}).get("description", ""))
    except (tomllib.TOMLDecodeError, AttributeError):
        return ""
