"""The HTML report: one self-contained file (no network, no external assets) that a person opens
after a CI run. It is made from the JSON report's document (``report.report_document``), so a
run under xdist, where only the controller has every test, writes the same page, and
``memguard html REPORT.json`` makes it from a saved report.

What it shows, in order: the run's header (interpreter, how each figure was measured, what
each metric means), the failed tests with their explanation, charts of soak and leak-check
series, and every test in a table that sorts by any column, with the budget used as a bar
and the change against the baseline. The table is built by a few lines of script from the
data embedded in the page (10,000 tests make 0.86 MB); the failures and the charts are plain
HTML and SVG, readable without script.

Size limits, so that a page of a large suite still opens: the table holds at most
``MAX_TESTS`` tests (the rest are counted), at most ``MAX_CHARTS`` charts are drawn (failures
first), an explanation is cut at ``MAX_EXPLANATION`` characters, and a series longer than
``MAX_POINTS`` is down-sampled to the lowest and the highest value of each of ``MAX_POINTS //
2`` equal buckets, in order, so that a spike is never smoothed away; the chart says so.
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, TypeGuard

from .measurement import COUNT_METRICS, format_metric

if TYPE_CHECKING:
    from .history import History

MAX_TESTS = 20_000
MAX_CHARTS = 200
MAX_POINTS = 400
MAX_EXPLANATION = 4_000

# What each figure is, in a sentence (docs/configuration.md has the whole table).
METRIC_MEANINGS = {
    "peak": "highest memory in use above the test's start: native and Python, every thread",
    "heap_peak": "peak of Python-heap bytes above the start (allocator hook, exact)",
    "retained": "Python-heap bytes allocated in the test and still alive after it, after a gc",
    "private": "change of anonymous (private) memory, after gc and malloc_trim(0)",
    "rss": "change of resident memory (counts shared pages and page cache: not gated)",
    "allocations": "allocator calls made on the test's own thread",
    "fds": "change of open file descriptors",
}
TABLE_METRICS = ("peak", "heap_peak", "retained", "private", "allocations")


class Series(NamedTuple):
    """One line of a chart: its name, the x positions and the values (bytes or blocks)."""

    name: str
    xs: list[float]
    ys: list[float]
    unit: str  # "bytes" or "blocks"


class Chart(NamedTuple):
    nodeid: str
    title: str
    series: list[Series]
    failed: bool


def downsample(
    xs: Sequence[float], ys: Sequence[float], limit: int = MAX_POINTS
) -> tuple[list[float], list[float]]:
    """At most ``limit`` points: the lowest and the highest of each of ``limit // 2`` equal
    buckets, in the order they occur (a spike stays a spike)."""
    if len(ys) <= limit:
        return list(xs), list(ys)
    buckets = max(1, limit // 2)
    out_x: list[float] = []
    out_y: list[float] = []
    for b in range(buckets):
        start = b * len(ys) // buckets
        end = (b + 1) * len(ys) // buckets
        if start >= end:
            continue
        window = range(start, end)
        low = min(window, key=lambda i: ys[i])
        high = max(window, key=lambda i: ys[i])
        for i in sorted({low, high}):
            out_x.append(xs[i])
            out_y.append(ys[i])
    return out_x, out_y


def charts_of(tests: Sequence[Mapping[str, Any]]) -> list[Chart]:
    """The soak and leak-check series in the report's tests: failed tests first."""
    charts = []
    for test in tests:
        details = test.get("details") or {}
        failed = test.get("outcome") in ("failed", "error")
        positions = details.get("soak.positions")
        heap = details.get("soak.heap")
        if _numbers(positions) and _numbers(heap) and len(positions) == len(heap):
            verdict = "growing" if details.get("soak.growing") else "levels off"
            title = f"soak over {details.get('soak.iterations', len(heap))} iterations: {verdict}"
            charts.append(
                Chart(test["nodeid"], title, [Series("heap", positions, heap, "bytes")], failed)
            )
        lines = [
            Series(name, [float(x) for x in range(1, len(values) + 1)], values, unit)
            for name, unit in (("blocks", "blocks"), ("bytes", "bytes"))
            if _numbers(values := details.get(f"leak.{name}_series"))
        ]
        if lines:
            if details.get("leak.leaked") and isinstance(
                first := details.get("leak.known_from"), str
            ):
                verdict = f"leaked, the leak explained under {first}"
            elif details.get("leak.leaked"):
                verdict = "leaked"
            elif details.get("leak.inconclusive"):
                verdict = "cut short by its time budget"
            else:
                verdict = "clean"
            title = f"leak check, the judged runs of {details.get('leak.calls')}: {verdict}"
            charts.append(Chart(test["nodeid"], title, lines, failed))
    charts.sort(key=lambda chart: not chart.failed)  # stable: report order within each
    return charts


def _numbers(values: object) -> TypeGuard[list[float]]:
    return (
        isinstance(values, list)
        and len(values) >= 2
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    )


def svg_chart(series: Series, width: int = 560, height: int = 160) -> str:
    """A line chart of one series as inline SVG: axes labelled with the first and last x and
    the lowest and highest value."""
    xs, ys = downsample(series.xs, series.ys)
    left, right, top, bottom = 70, 10, 10, 24
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    span_x = (x1 - x0) or 1
    span_y = (y1 - y0) or 1
    plot_w, plot_h = width - left - right, height - top - bottom
    points = " ".join(
        f"{left + (x - x0) * plot_w / span_x:.1f},{top + plot_h - (y - y0) * plot_h / span_y:.1f}"
        for x, y in zip(xs, ys)
    )

    def label(value: float) -> str:
        if series.unit == "bytes":
            return format_metric("peak", int(value))
        return f"{value:,.0f}"

    note = (
        f" (down-sampled from {len(series.ys):,} to {len(ys):,} points: each bucket's lowest "
        "and highest)"
        if len(ys) < len(series.ys)
        else ""
    )
    return (
        f'<figure class="chart"><svg width="{width}" height="{height}" role="img" '
        f'aria-label="{html.escape(series.name)}">'
        f'<line x1="{left}" y1="{top + plot_h}" x2="{width - right}" y2="{top + plot_h}" '
        'class="axis"/>'
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}" class="axis"/>'
        f'<text x="{left - 4}" y="{top + 10}" text-anchor="end">{label(y1)}</text>'
        f'<text x="{left - 4}" y="{top + plot_h}" text-anchor="end">{label(y0)}</text>'
        f'<text x="{left}" y="{height - 6}">{x0:,.0f}</text>'
        f'<text x="{width - right}" y="{height - 6}" text-anchor="end">{x1:,.0f}</text>'
        f'<polyline class="line" data-points="{len(xs)}" points="{points}"/></svg>'
        f"<figcaption>{html.escape(series.name)} ({series.unit}){note}</figcaption></figure>"
    )


def _rows(tests: Sequence[Mapping[str, Any]]) -> list[list[Any]]:
    """The table's data, compact: one list a test."""
    rows = []
    for test in tests[:MAX_TESTS]:
        metrics = test.get("metrics") or {}
        budget = test.get("budget") or {}
        baseline = test.get("baseline") or {}
        use = [
            metrics[name] / limit
            for name, limit in budget.items()
            if isinstance(limit, (int, float))
            and not isinstance(limit, bool)
            and limit > 0
            and isinstance(metrics.get(name), (int, float))
        ]
        rows.append(
            [
                test.get("nodeid", ""),
                test.get("outcome", ""),
                *(metrics.get(name) for name in TABLE_METRICS),
                round(max(use), 4) if use else None,
                baseline.get("status") or "",
                str(baseline.get("changes") or ""),
            ]
        )
    return rows


_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.6em}
table{border-collapse:collapse}td,th{padding:2px 8px;border-bottom:1px solid #ddd}
th{cursor:pointer;background:#f4f4f4;position:sticky;top:0}td.n{text-align:right}
tr.failed td,tr.error td{background:#fde8e8}tr.regressed td{background:#fff3cd}
.bar{display:inline-block;height:10px;background:#4a8;vertical-align:middle}
.bar.over{background:#d33}pre{background:#f7f7f7;padding:8px;overflow:auto;max-height:30em}
.chart svg{background:#fafafa}.axis{stroke:#999}.line{fill:none;stroke:#36c;stroke-width:1.5}
.chart text{font-size:11px;fill:#555}dl{display:grid;grid-template-columns:max-content auto}
dt{font-weight:bold;padding-right:1em}dd{margin:0}
"""

# Builds and sorts the table from the embedded data; no library, no network.
_SCRIPT = """
(function(){
var data=JSON.parse(document.getElementById('memguard-data').textContent);
var counts={};data.count_metrics.forEach(function(m){counts[m]=1;});
var units=['B','KiB','MiB','GiB','TiB'];
function size(v){if(v===null)return 'n/a';var a=Math.abs(v),i=0;
 while(a>=1024&&i<units.length-1){a/=1024;i++;}
 return (v<0?'-':'')+(i?a.toFixed(1):String(a))+' '+units[i];}
function fmt(col,v){if(v===null||v===undefined)return 'n/a';
 return counts[data.columns[col]]?Number(v).toLocaleString('en'):size(v);}
var body=document.querySelector('#tests tbody');
function render(rows){var out=[];rows.forEach(function(r){
 var tr=document.createElement('tr');tr.className=r[1]+(r[8]==='regressed'?' regressed':'');
 var td=document.createElement('td');td.textContent=r[0];tr.appendChild(td);
 td=document.createElement('td');td.textContent=r[1];tr.appendChild(td);
 for(var c=2;c<7;c++){td=document.createElement('td');td.className='n';
  td.textContent=fmt(c,r[c]);tr.appendChild(td);}
 td=document.createElement('td');if(r[7]!==null){var b=document.createElement('span');
  b.className='bar'+(r[7]>1?' over':'');b.style.width=Math.min(100,r[7]*100)+'px';
  td.appendChild(b);td.appendChild(document.createTextNode(' '+Math.round(r[7]*100)+'%'));}
 tr.appendChild(td);
 td=document.createElement('td');td.textContent=r[8]+(r[9]?': '+r[9]:'');tr.appendChild(td);
 out.push(tr);});body.textContent='';var frag=document.createDocumentFragment();
 out.forEach(function(tr){frag.appendChild(tr);});body.appendChild(frag);}
var order={col:-1,down:false};
document.querySelectorAll('#tests th').forEach(function(th,i){
 th.addEventListener('click',function(){order.down=order.col===i?!order.down:i>=2;order.col=i;
  data.rows.sort(function(a,b){var x=a[i],y=b[i];
   if(x===y)return 0;if(x===null)return 1;if(y===null)return -1;
   var r=x<y?-1:1;return order.down?-r:r;});render(data.rows);});});
render(data.rows);
document.getElementById('shown').textContent=data.rows.length.toLocaleString('en');
})();
"""


def render_html(
    document: Mapping[str, Any],
    explanations: Mapping[str, str] | None = None,
    title: str = "memguard report",
) -> str:
    """The page for a JSON report's document; ``explanations``: node id -> failure text."""
    explanations = explanations or {}
    tests: list[Mapping[str, Any]] = [t for t in document.get("tests", []) if isinstance(t, dict)]
    failed = [t for t in tests if t.get("outcome") in ("failed", "error")]
    regressed = [t for t in tests if (t.get("baseline") or {}).get("status") == "regressed"]
    charts = charts_of(tests)
    e = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{e(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{e(title)}</h1>",
        "<p>",
        f"Interpreter: <b>{e(str(document.get('scope', '')))}</b>. ",
        f"Measured: {e(str(document.get('measured', '')))}.<br>",
        f"{len(tests):,} tests: {len(failed):,} failed or in error, "
        f"{len(regressed):,} regressed against the baseline, {len(charts):,} with a series.",
        "</p>",
        "<details><summary>What each figure means</summary><dl>",
        *(f"<dt>{e(name)}</dt><dd>{e(text)}</dd>" for name, text in METRIC_MEANINGS.items()),
        "<dt>budget use</dt><dd>the figure as a share of its budget, the highest of the "
        "test's budgets (red above 100%)</dd>",
        "<dt>baseline</dt><dd>the test's status against the committed baseline, and what "
        "changed beyond tolerance</dd></dl></details>",
    ]
    if failed:
        parts.append(f'<h2 id="failures">Failures ({len(failed):,})</h2>')
        for test in failed:
            nodeid = str(test.get("nodeid", ""))
            text = explanations.get(nodeid, "")
            if len(text) > MAX_EXPLANATION:
                text = text[:MAX_EXPLANATION] + f"\n[... cut at {MAX_EXPLANATION:,} characters]"
            parts.append(f'<h3 class="failure">{e(nodeid)}: {e(str(test.get("outcome")))}</h3>')
            parts.append(f"<pre>{e(text) if text else '(no explanation recorded)'}</pre>")
    if charts:
        shown = charts[:MAX_CHARTS]
        more = len(charts) - len(shown)
        parts.append(f'<h2 id="charts">Series ({len(charts):,})</h2>')
        if more:
            parts.append(f"<p>{more:,} more series not drawn (the page draws {MAX_CHARTS}).</p>")
        for chart in shown:
            parts.append(f"<h3>{e(chart.nodeid)}</h3><p>{e(chart.title)}</p>")
            parts.extend(svg_chart(series) for series in chart.series)
    rows = _rows(tests)
    columns = ["test", "outcome", *TABLE_METRICS, "budget use", "baseline"]
    data = {
        "columns": columns,
        "count_metrics": sorted(COUNT_METRICS),
        "rows": rows,
    }
    # No "<" at all in the script element, so that no text of a test can end it or open a
    # comment in it; JSON reads the escape back as "<".
    embedded = json.dumps(data, separators=(",", ":")).replace("<", "\\u003c")
    not_shown = len(tests) - len(rows)
    parts += [
        f'<h2 id="all">All tests (<span id="shown">{len(rows):,}</span>)</h2>',
        f"<p>{not_shown:,} more tests are in the JSON report only (the page holds "
        f"{MAX_TESTS:,}).</p>"
        if not_shown
        else "",
        "<p>Click a column to sort by it.</p>",
        "<noscript><p>The table needs script; the failures and charts above do not.</p></noscript>",
        '<table id="tests"><thead><tr>',
        *(f"<th>{e(c)}</th>" for c in columns),
        "</tr></thead><tbody></tbody></table>",
        f'<script type="application/json" id="memguard-data">{embedded}</script>',
        f"<script>{_SCRIPT}</script>",
        "</body></html>",
    ]
    return "\n".join(part for part in parts if part) + "\n"


def render_history_html(history: History, title: str = "memguard history") -> str:
    """The page of ``memguard history``: for each test that moved beyond tolerance, its figure
    at each commit that changed the baselines, as a chart, and the commits that moved it."""
    e = html.escape
    commits = history.commits
    moved = sorted((t for t in history.tests if t.moves), key=lambda t: (-abs(t.change), t.nodeid))
    unit = "blocks" if history.metric in COUNT_METRICS else "bytes"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{e(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{e(title)}</h1>",
        f"<p><b>{e(history.metric)}</b> ({e(METRIC_MEANINGS.get(history.metric, ''))}) in "
        f"<b>{e(history.scope)}</b>, over {len(commits):,} commits that changed baseline files. "
        f"{len(moved):,} of {len(history.tests):,} tests moved beyond tolerance.</p>",
    ]
    if history.problems:
        parts.append("<p>Skipped (could not be read):</p><ul>")
        parts.extend(f"<li>{e(problem)}</li>" for problem in history.problems)
        parts.append("</ul>")
    for test in moved[:MAX_CHARTS]:
        points = [(i + 1, v) for i, v in enumerate(test.values) if v is not None]
        parts.append(f"<h3>{e(test.nodeid)}</h3>")
        if len(points) >= 2:
            series = Series(
                f"{history.metric} at each commit",
                [float(i) for i, _ in points],
                [float(v) for _, v in points],
                "blocks" if unit == "blocks" else "bytes",
            )
            parts.append(svg_chart(series))
        parts.append("<ul>")
        parts.extend(
            f"<li><code>{e(move.commit.sha[:10])}</code> {e(move.commit.day)} "
            f"{e(format_metric(history.metric, move.before))} &rarr; "
            f"{e(format_metric(history.metric, move.after))}: {e(move.commit.subject)}</li>"
            for move in test.moves
        )
        parts.append("</ul>")
    if len(moved) > MAX_CHARTS:
        parts.append(f"<p>{len(moved) - MAX_CHARTS:,} more tests moved (not drawn).</p>")
    parts.append("<h2>Commits (x axis: their number)</h2><table><tr><th>#</th><th>commit</th>")
    parts.append("<th>date</th><th>subject</th></tr>")
    parts.extend(
        f"<tr><td class='n'>{i}</td><td><code>{e(c.sha[:10])}</code></td><td>{e(c.day)}"
        f"</td><td>{e(c.subject)}</td></tr>"
        for i, c in enumerate(commits, 1)
    )
    parts += ["</table>", "</body></html>"]
    return "\n".join(parts) + "\n"
