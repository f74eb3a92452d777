"""The HTML of the reports: the page and its style (screen and print), tables, figures.

Shared by the participant report and the group page. Nothing here draws or reads an image: the
functions turn numbers and paths into escaped HTML.
"""

from __future__ import annotations

import html
import re

import numpy as np

from tmstarget.reports.palette import TARGET_COLOURS, TARGET_LABELS

STYLE = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;max-width:1080px;margin:0 auto;
padding:0 1.2em 3em;color:#222;line-height:1.45}
nav{position:sticky;top:0;background:#fff;border-bottom:1px solid #ddd;padding:.4em 0;z-index:1;font-size:.92em}
nav a{margin-right:1.1em;color:#1f4e99;text-decoration:none}
h1{margin:.4em 0 0;font-size:1.5em}h2{border-bottom:2px solid #1f4e99;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em;max-width:100%}
td,th{border:1px solid #ccc;padding:.2em .55em;text-align:right;vertical-align:top}th{background:#f0f3f8}
td:first-child,th:first-child{text-align:left}
td.num{white-space:nowrap}
table.targets td:first-child{white-space:nowrap}
table.targets{font-size:.84em}table.targets td,table.targets th{padding:.2em .4em}
table.reliability td:last-child{text-align:left}
.tablewrap{overflow-x:auto;max-width:100%}
img{max-width:100%;height:auto;display:block;margin:.6em 0;border:1px solid #eee}
code,.path{font-family:ui-monospace,'DejaVu Sans Mono',monospace;font-size:.92em;overflow-wrap:anywhere}
.warn{background:#fff4e5;border-left:4px solid #e69500;padding:.35em .8em;margin:.3em 0}
.ok{background:#eef8ee;border-left:4px solid #2ca02c;padding:.35em .8em;margin:.3em 0}
.boilerplate{background:#f7f7f7;padding:.6em 1em;border:1px solid #ddd}
.kv td{text-align:left;white-space:normal}
.swatch{display:inline-block;width:.8em;height:.8em;border-radius:50%;margin-right:.35em;vertical-align:-.05em}
h1+section h2{margin-top:.3em}
.plan-grid{display:grid;grid-template-columns:minmax(0,1.15fr) minmax(0,1fr);gap:1.2em;align-items:start}
.plan-grid h3{margin:.1em 0 .3em}
table.plan{width:100%;margin-top:0}
table.plan th{text-align:left;width:8.5em;font-weight:600}
table.plan td{text-align:left}
table.plan td.coords{font-size:1.12em;font-weight:700;white-space:nowrap}
.plan-head{display:flex;gap:1.2em;align-items:center;margin:.8em 0 0}
.plan-head img{margin:0;width:58%}
.plan-head figcaption{flex:1}
.print-note{color:#666;font-size:.85em}
@page{size:A4;margin:11mm}
@media print{
  body{max-width:none;padding:0;font-size:9.5pt;line-height:1.3}
  nav,.print-note,section:not(#plan){display:none}
  h1{font-size:15pt;margin-top:0}h2{font-size:12pt;margin-top:.3em}h3{font-size:10.5pt;margin:.5em 0 .2em}
  table{font-size:9pt;margin:.3em 0}
  .plan-grid{display:block}
  table.plan th{width:13em}
  table.plan code{white-space:nowrap}
  .plan-head img{max-height:75mm;width:auto}
  .warn,.ok{padding:.2em .6em}
  #plan{break-inside:avoid}
}
"""

#: Marks the page once every figure has loaded, for a person (a banner) and for tests (data-*):
#: ``data-images-ok`` is "true" when every <img> decoded with a non-zero size;
#: ``data-first-screen`` holds the text a reader sees without scrolling; ``data-wide-tables`` counts
#: the tables wider than the page.
CHECK_SCRIPT = """
window.tmsErrors = [];
window.addEventListener('error', function (e) {
  window.tmsErrors.push(e.message || ('failed to load ' + (e.target && (e.target.src || e.target.href))));
}, true);
function tmsFirstScreen() {
  var walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT), node, parts = [];
  var range = document.createRange();
  while ((node = walker.nextNode())) {
    if (!node.textContent.trim()) { continue; }
    range.selectNodeContents(node);
    var r = range.getBoundingClientRect();
    if (r.width > 0 && r.top >= 0 && r.bottom <= window.innerHeight && r.left >= 0 && r.right <= window.innerWidth) {
      parts.push(node.textContent.trim());
    }
  }
  return parts.join(' ');
}
window.addEventListener('load', function () {
  var images = Array.prototype.slice.call(document.images);
  var broken = images.filter(function (i) { return !i.complete || i.naturalWidth === 0; });
  document.body.dataset.images = String(images.length);
  document.body.dataset.imagesOk = String(broken.length === 0 && images.length > 0);
  document.body.dataset.errors = String(window.tmsErrors.length + broken.length);
  if (broken.length) {
    var note = document.createElement('p');
    note.className = 'warn';
    note.textContent = broken.length + ' figure(s) could not be loaded: ' +
      broken.map(function (i) { return i.getAttribute('src'); }).join(', ');
    document.body.insertBefore(note, document.body.firstChild);
  }
  document.body.dataset.firstScreen = tmsFirstScreen();
  var right = document.body.getBoundingClientRect().right + 1;
  document.body.dataset.wideTables = String(Array.prototype.slice.call(document.querySelectorAll('table'))
    .filter(function (t) { var r = t.getBoundingClientRect(); return r.width > 0 && r.right > right; }).length);
});
"""


def page(title, nav, body):
    """A whole self-contained page: style and check script inline, ``nav`` as (anchor, label)."""
    links = "".join(f"<a href='#{anchor}'>{html.escape(label)}</a>" for anchor, label in nav)
    return (f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            f"<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>{html.escape(title)}</title><style>{STYLE}</style>"
            f"<script>{CHECK_SCRIPT}</script></head>\n<body>\n<nav>{links}</nav>\n{body}\n</body></html>\n")


def sections_html(sections):
    """``<section>`` elements of (anchor, title, content) triples."""
    return "\n".join(f"<section id='{anchor}'><h2>{html.escape(title)}</h2>{content}</section>"
                     for anchor, title, content in sections)


def figure_html(src, alt, caption=None):
    """An image linked by a relative path, with an optional caption."""
    cap = f"<p><small>{html.escape(caption)}</small></p>" if caption else ""
    return f"<img src='{html.escape(src)}' alt='{html.escape(alt)}'>{cap}"


def format_number(value, digits=1):
    """A number for a table cell: fixed decimals, ``n/a`` for a missing value."""
    if value is None:
        return "n/a"
    if isinstance(value, (float, np.floating)):
        return "n/a" if not np.isfinite(value) else f"{value:.{digits}f}"
    return html.escape(str(value))


def format_point(values, digits=1):
    """``(x, y, z)`` of a point (mm), ``n/a`` when any coordinate is missing."""
    values = [float(v) for v in values]
    if not all(np.isfinite(values)):
        return "n/a"
    return "(" + ", ".join(f"{v:.{digits}f}" for v in values) + ")"


def words(key):
    """A sidecar key in words: ``RetainedTime_min`` -> 'retained time (min)'."""
    key, _, unit = str(key).partition("_")
    text = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", key).lower()
    return f"{text} ({unit})" if unit else text


def key_value_table(data):
    """A mapping as a two-column table of words and readable values (nested mappings nest)."""
    rows = []
    for key, value in data.items():
        if isinstance(value, dict):
            cell = key_value_table(value)
        elif isinstance(value, bool):
            cell = "yes" if value else "no"
        elif isinstance(value, float):
            cell = html.escape(f"{value:.4g}")
        elif isinstance(value, list):
            cell = html.escape(", ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in value))
        else:
            cell = html.escape(str(value))
        rows.append(f"<tr><td>{html.escape(words(key))}</td><td>{cell}</td></tr>")
    return "<table class='kv'>" + "".join(rows) + "</table>"


#: Columns of the targets table in the reports (the TSV holds all of them): (header, columns, digits).
#: Points are one cell each, so the table fits a laptop screen and an A4 page.
REPORT_COLUMNS = (
    ("cortical point (mm)", ("x", "y", "z"), 1),
    ("Fisher z", ("seed_correlation_z",), 2),
    ("scalp point (mm)", ("scalp_x", "scalp_y", "scalp_z"), 1),
    ("scalp to cortex (mm)", ("scalp_distance_mm",), 1),
    ("distance to the connectivity target (mm)", ("distance_to_connectivity_mm",), 1),
    ("dose adjustment (% MSO)", ("depth_adjustment_pct_mso",), 1),
)


def targets_html(table, space, participant_column=None):
    """The targets table of one space; each row carries its coordinates as ``data-*`` attributes.

    With ``participant_column`` (the group page) the first column names each row's participant.
    """
    columns = [(header, names, digits) for header, names, digits in REPORT_COLUMNS
               if all(n in table.columns for n in names)]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in
                   [*(["participant"] if participant_column else []), "target", *(h for h, _, _ in columns)])
    rows = []
    for _, row in table.iterrows():
        name = str(row["name"])
        swatch = f"<span class='swatch' style='background:{TARGET_COLOURS.get(name, '#000')}'></span>"
        cells = "".join(
            f"<td class='num'>{format_point([row[n] for n in names], digits) if len(names) == 3 else format_number(row[names[0]], digits)}</td>"
            for _, names, digits in columns)
        participant = str(row[participant_column]) if participant_column else ""
        who = f"<td>{html.escape(participant)}</td>" if participant_column else ""
        label = TARGET_LABELS.get(name, name)
        rows.append(f"<tr class='target' data-target='{html.escape(name)}' data-space='{html.escape(space)}' "
                    f"data-x='{row.x}' data-y='{row.y}' data-z='{row.z}' data-participant='{html.escape(participant)}'>"
                    f"{who}<td title='{html.escape(label)}'>{swatch}{html.escape(name)}</td>{cells}</tr>")
    return f"<div class='tablewrap'><table class='targets'><tr>{head}</tr>{''.join(rows)}</table></div>"


def parse_report_targets(text):
    """The targets listed in a report's HTML (participant or group page).

    Returns
    -------
    list of dict
        ``target``, ``space``, ``participant`` (empty on a participant page) and ``xyz`` (mm).
    """
    pattern = (r"<tr class='target' data-target='([^']*)' data-space='([^']*)' data-x='([^']*)' "
               r"data-y='([^']*)' data-z='([^']*)' data-participant='([^']*)'>")
    return [{"target": html.unescape(name), "space": html.unescape(space), "participant": html.unescape(who),
             "xyz": tuple(float(v) for v in xyz)}
            for name, space, *xyz, who in re.findall(pattern, text)]
