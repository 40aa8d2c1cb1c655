"""report.html: the human-evaluation page of one evaluation, a single file that needs no network.

The page holds the summary tables (ROUGE base vs fine-tuned, generation stats), the plots (inline PNGs), then
every dialogue with its references, both summaries and their ROUGE (mean over references, `rouge.score_each`).
Its script sorts (worst fine-tuned first, biggest gain or loss, flagged first, dataset order) and filters (text,
kind of flag). Flags (`stats.flags`) mark what a reader should look at first: empty summaries, summaries cut at
`max_new_tokens`, invented speakers. Opening it as `report.html#selftest` runs the controls once and writes the
outcome into `#selftest` (tests/test_report.py checks it in headless Chromium).
"""

from __future__ import annotations

import base64
import html
import os
from collections.abc import Sequence
from pathlib import Path

from .rouge import ROUGE_NAMES, score_each
from .stats import FLAG_LABELS, flags, format_stats


REPORT = "report.html"
SORT_TYPE = "rougeL"  # what "worst" and "gain" compare
SHOWN_TYPES = ("rouge1", "rouge2", "rougeL")
MODELS = (("base", "base"), ("tuned", "fine-tuned"))


def write_report(
    path: str | os.PathLike, metrics: dict, rows: list[dict], plots: Sequence[str | os.PathLike] = ()
) -> str:
    """Write the page for `rows` (predictions.jsonl rows: id, dialogue, references, base, tuned and, when
    generation recorded them, base_stopped / tuned_stopped) and `metrics` (eval_results.json)."""
    path = os.fspath(path)
    Path(path).write_text(build_report(metrics, rows, plots), encoding="utf-8")
    return path


def build_report(metrics: dict, rows: list[dict], plots: Sequence[str | os.PathLike] = ()) -> str:
    if not rows:
        raise ValueError("no predictions to report")
    has_base = all(row.get("base") is not None for row in rows)
    models = [(key, label) for key, label in MODELS if key == "tuned" or has_base]
    references = [row["references"] for row in rows]
    scores = {key: score_each([row[key] for row in rows], references) for key, _ in models}
    found = {key: [flags(row[key], row["dialogue"], row.get(f"{key}_stopped")) for row in rows] for key, _ in models}
    articles = [_article(index, row, models, scores, found) for index, row in enumerate(rows)]
    flagged = {kind: sum(any(kind in found[key][index] for key, _ in models) for index in range(len(rows)))
               for kind in FLAG_LABELS}
    title = f"DialogSum {metrics.get('split', 'test')}: base vs fine-tuned, dialogue by dialogue"
    return _PAGE.format(
        title=_e(title),
        style=_STYLE,
        script=_SCRIPT,
        intro=_intro(metrics, len(rows)),
        tables=_rouge_table(metrics, models) + _stats_table(metrics, models),
        plots="".join(_plot(plot) for plot in plots),
        look_first=_look_first(flagged, len(rows)),
        flag_options="".join(f'<option value="{kind}">{_e(label)}</option>' for kind, label in FLAG_LABELS.items()),
        gain_options='<option value="gain">biggest gain first</option><option value="loss">biggest loss first</option>'
        if has_base else "",
        count=len(rows),
        articles="\n".join(articles),
    )


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _intro(metrics: dict, count: int) -> str:
    parts = [f"{count} dialogues"]
    if metrics.get("num_pairs"):
        parts.append(f"{metrics['num_pairs']} dialogue-reference pairs")
    if metrics.get("adapter"):
        parts.append(f"adapter <code>{_e(metrics['adapter'])}</code>")
    if metrics.get("base_model_hub_id"):
        parts.append(f"base <code>{_e(metrics['base_model_hub_id'])}</code>")
    if metrics.get("speakers") == "named":
        parts.append("speaker tags replaced by names (named-speaker variant)")
    settings = ", ".join(f"{_e(key)}={_e(value)}" for key, value in (metrics.get("generation") or {}).items()
                         if not isinstance(value, (list, dict)))
    text = f"<p>{'; '.join(parts)}.</p>"
    if settings:
        text += f"<p class=small>Generation: {settings}.</p>"
    if metrics.get("protocol"):
        text += f"<p class=small>ROUGE protocol: {_e(metrics['protocol'])}.</p>"
    return text


def _rouge_table(metrics: dict, models) -> str:
    available = [(key, label) for key, label in models if metrics.get(key)]
    if not available:
        return ""
    head = "".join(f"<th>{_e(label)}</th>" for _, label in available)
    if len(available) == 2:
        head += "<th>difference</th>"
    body = ""
    for rouge_type, name in ROUGE_NAMES.items():
        values = [metrics[key]["mean_over_references"][rouge_type] for key, _ in available]
        cells = "".join(f"<td>{value:.2f}</td>" for value in values)
        if len(values) == 2:
            cells += f"<td>{values[1] - values[0]:+.2f}</td>"
        body += f"<tr><th>{name}</th>{cells}</tr>"
    return (f"<table><caption>ROUGE F x100, mean over references</caption><tr><th></th>{head}</tr>{body}"
            "</table>")


def _stats_table(metrics: dict, models) -> str:
    stats = metrics.get("stats") or {}
    available = [(key, label) for key, label in models if stats.get(key)]
    if not available:
        return ""
    shown = {key: format_stats(stats[key]) for key, _ in available}
    head = "".join(f"<th>{_e(label)}</th>" for _, label in available)
    body = "".join(
        f"<tr><th>{_e(name)}</th>" + "".join(f"<td>{_e(shown[key][name])}</td>" for key, _ in available) + "</tr>"
        for name in shown[available[0][0]]
    )
    return f"<table><caption>Generation stats</caption><tr><th></th>{head}</tr>{body}</table>"


def _plot(plot: str | os.PathLike) -> str:
    data = base64.b64encode(Path(plot).read_bytes()).decode("ascii")
    alt = Path(plot).stem.replace("_", " ")
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{data}">'


def _look_first(flagged: dict[str, int], count: int) -> str:
    items = "".join(
        f'<li><button type=button data-show-flag="{kind}">{flagged[kind]} of {count}: {_e(FLAG_LABELS[kind])}'
        "</button></li>"
        for kind in FLAG_LABELS
    )
    return f"<ul class=look-first>{items}</ul>"


def _article(index: int, row: dict, models, scores: dict, found: dict) -> str:
    kinds = sorted({kind for key, _ in models for kind in found[key][index]})
    tuned = scores["tuned"][index][SORT_TYPE]
    gain = tuned - scores["base"][index][SORT_TYPE] if "base" in scores else 0.0
    references = "".join(f"<li>{_e(ref)}</li>" for ref in row["references"])
    badges = "".join(f"<span class=flag>{_e(label)}: {_e(FLAG_LABELS[kind])}</span>"
                     for key, label in models for kind in found[key][index])
    summaries = "".join(_summary(label, row[key], scores[key][index], found[key][index]) for key, label in models)
    return (
        f'<article class=dialogue data-index="{index}" data-id="{_e(row["id"])}" data-tuned="{tuned:.2f}" '
        f'data-gain="{gain:.2f}" data-flags="{" ".join(kinds)}">'
        f'<h3>{_e(row["id"])}{badges}</h3>'
        f'<div class=columns><div><h4>dialogue</h4><pre>{_e(row["dialogue"])}</pre></div>'
        f"<div><h4>references</h4><ol>{references}</ol>{summaries}</div></div></article>"
    )


def _summary(label: str, text: str, rouge: dict, found: dict) -> str:
    values = ", ".join(f"{ROUGE_NAMES[rouge_type]} {rouge[rouge_type]:.1f}" for rouge_type in SHOWN_TYPES)
    notes = [FLAG_LABELS[kind] + (": " + ", ".join(value) if isinstance(value, list) else "")
             for kind, value in found.items()]
    note = "".join(f"<span class=flag>{_e(item)}</span>" for item in notes)
    shown = _e(text) if text.strip() else "<em>(empty)</em>"
    return f"<h4>{_e(label)} <span class=score>{values}</span>{note}</h4><p class=summary>{shown}</p>"


_STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 0 auto; max-width: 1200px; padding: 0 16px 48px; color: #222; }
h1 { font-size: 1.5em; } h3 { margin: 0 0 6px; font-size: 1.05em; } h4 { margin: 10px 0 2px; font-size: .95em; }
table { border-collapse: collapse; margin: 8px 16px 16px 0; display: inline-table; vertical-align: top; }
caption { text-align: left; font-weight: 600; padding-bottom: 4px; }
th, td { border: 1px solid #ccc; padding: 3px 10px; text-align: right; } th:first-child { text-align: left; }
img { max-width: 48%; margin: 4px 1% 4px 0; border: 1px solid #ddd; }
.small { color: #555; font-size: .9em; }
.controls { position: sticky; top: 0; background: #fff; padding: 10px 0; border-bottom: 1px solid #ccc; z-index: 1; }
.controls input[type=search] { width: 320px; }
.look-first { list-style: none; padding: 0; display: flex; gap: 8px; flex-wrap: wrap; }
.look-first button { cursor: pointer; }
article { border: 1px solid #ddd; border-radius: 6px; padding: 10px 14px; margin: 12px 0; }
article[data-flags]:not([data-flags=""]) { border-left: 5px solid #d9822b; }
.columns { display: grid; grid-template-columns: 1fr 1fr; gap: 18px; }
pre { white-space: pre-wrap; background: #f7f7f7; padding: 8px; margin: 0; font: 13px/1.4 ui-monospace, monospace; }
ol { margin: 0; padding-left: 20px; } .summary { margin: 0; }
.score { font-weight: normal; color: #555; margin-left: 6px; }
.flag { background: #fde7d2; color: #8a4a0b; border-radius: 4px; padding: 0 6px; margin-left: 6px; font-size: .85em; }
#selftest:empty { display: none; }
"""

# Plain DOM code, no library: sorts by moving the articles, filters by hiding them.
_SCRIPT = r"""
(function () {
  var list = document.getElementById("dialogues");
  var items = Array.prototype.slice.call(list.children);
  var text = items.map(function (item) { return item.textContent.toLowerCase(); });
  var sort = document.getElementById("sort"), filter = document.getElementById("filter");
  var flag = document.getElementById("flag"), shown = document.getElementById("shown");
  var keys = {
    worst: function (item) { return parseFloat(item.dataset.tuned); },
    gain: function (item) { return -parseFloat(item.dataset.gain); },
    loss: function (item) { return parseFloat(item.dataset.gain); },
    flagged: function (item) { return item.dataset.flags ? 0 : 1; },
    order: function () { return 0; }
  };
  function apply() {
    var key = keys[sort.value] || keys.worst;
    var sorted = items.slice().sort(function (a, b) {
      return (key(a) - key(b)) || (a.dataset.index - b.dataset.index);
    });
    sorted.forEach(function (item) { list.appendChild(item); });
    var query = filter.value.trim().toLowerCase(), kind = flag.value, count = 0;
    items.forEach(function (item, index) {
      var flags = item.dataset.flags ? item.dataset.flags.split(" ") : [];
      var visible = (!query || text[index].indexOf(query) >= 0) &&
        (kind === "all" || (kind === "any" ? flags.length > 0 : flags.indexOf(kind) >= 0));
      item.hidden = !visible;
      count += visible ? 1 : 0;
    });
    shown.textContent = count + " of " + items.length + " dialogues shown";
  }
  [sort, flag].forEach(function (control) { control.addEventListener("change", apply); });
  filter.addEventListener("input", apply);
  Array.prototype.forEach.call(document.querySelectorAll("[data-show-flag]"), function (button) {
    button.addEventListener("click", function () { flag.value = button.dataset.showFlag; apply(); });
  });
  apply();

  function selftest() {
    var failures = [], checks = 0;
    function check(ok, what) { checks += 1; if (!ok) { failures.push(what); } }
    function visible() {
      return Array.prototype.filter.call(list.children, function (item) { return !item.hidden; });
    }
    function set(control, value) { control.value = value; apply(); }
    function ordered(name, key) {
      set(sort, name);
      var values = visible().map(key);
      check(values.length === items.length, name + ": every dialogue shown");
      check(values.every(function (v, i) { return i === 0 || values[i - 1] <= v; }), name + ": order");
    }
    ordered("worst", keys.worst);
    if (sort.querySelector("option[value=gain]")) { ordered("gain", keys.gain); ordered("loss", keys.loss); }
    ordered("order", function (item) { return parseFloat(item.dataset.index); });
    var target = items[items.length - 1];
    set(filter, target.dataset.id.toUpperCase());
    check(visible().indexOf(target) >= 0, "filter: the dialogue searched for is shown");
    check(visible().every(function (item) {
      return item.textContent.toLowerCase().indexOf(target.dataset.id.toLowerCase()) >= 0;
    }), "filter: only matching dialogues are shown");
    set(filter, "no dialogue holds this \u2603 text");
    check(visible().length === 0 && shown.textContent.indexOf("0 of ") === 0, "filter: nothing matches");
    set(filter, "");
    set(flag, "any");
    var flagged = items.filter(function (item) { return item.dataset.flags; });
    check(visible().length === flagged.length, "flag filter: exactly the flagged dialogues");
    set(flag, "all");
    check(visible().length === items.length, "filters cleared: every dialogue shown");
    var result = failures.length ? "FAIL " + failures.join("; ") : "PASS " + checks + " checks";
    document.getElementById("selftest").textContent = result;
    console.log("report selftest: " + result);
  }
  if (location.hash === "#selftest") { selftest(); }
})();
"""

_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>{style}</style>
</head>
<body>
<h1>{title}</h1>
{intro}
<section>{tables}</section>
<section>{plots}</section>
<h2>Look at these first</h2>
{look_first}
<div class=controls>
<label>sort <select id=sort>
<option value="worst">worst fine-tuned first (ROUGE-L)</option>{gain_options}
<option value="flagged">flagged first</option><option value="order">dataset order</option>
</select></label>
<label>show <select id=flag><option value="all">all</option><option value="any">any flag</option>{flag_options}
</select></label>
<label>text <input id=filter type=search placeholder="filter by any text: id, words, a name"></label>
<span id=shown>{count} dialogues</span>
</div>
<output id=selftest></output>
<div id=dialogues>
{articles}
</div>
<script>{script}</script>
</body>
</html>
"""
