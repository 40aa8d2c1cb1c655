"""report.html: self-contained, escaped, per-dialogue ROUGE and flags; sorting and filtering in headless Chromium."""

import re
import shutil
import subprocess

import pytest
from test_plots import trainer_state

from dialogsum_sft.plots import plot_loss
from dialogsum_sft.report import build_report, write_report
from dialogsum_sft.rouge import score, score_each
from dialogsum_sft.stats import generation_stats


HOSTILE = '</pre></script><script>document.title = "injected"</script><img src=x onerror="alert(1)">'
ROWS = [
    {"id": "test_0", "dialogue": "#Person1#: Is the 5 < 6 train late?\n#Person2#: Yes & no.",
     "references": ["#Person1# asks #Person2# about the train.", "#Person2# says the train is late."],
     "base": "The train.", "tuned": "#Person1# asks #Person2# whether the train is late.",
     "base_stopped": True, "tuned_stopped": True},
    {"id": "test_1", "dialogue": f"#Person1#: {HOSTILE}\n#Person2#: Odd.",
     "references": ["#Person1# writes markup."], "base": "", "tuned": "#Person1# writes markup for #Person3#.",
     "base_stopped": True, "tuned_stopped": True},
    {"id": "test_2", "dialogue": "Anna: Lunch?\nBen: Sure, at noon.",
     "references": ["Anna and Ben agree to have lunch at noon."], "base": "Anna and Ben will have lunch at noon.",
     "tuned": "Anna and Ben agree to lunch at noon and then lunch and then", "base_stopped": True,
     "tuned_stopped": False},
    {"id": "test_10", "dialogue": "#Person1#: Bye.", "references": ["#Person1# leaves."],
     "base": "#Person1# leaves.", "tuned": "#Person1# says bye.", "base_stopped": True, "tuned_stopped": True},
]


def metrics_of(rows):
    references = [row["references"] for row in rows]
    metrics = {"split": "test", "num_pairs": sum(map(len, references)), "adapter": "outputs/run <1>",
               "generation": {"max_new_tokens": 16, "do_sample": False}, "stats": {}}
    for key in ("base", "tuned"):
        scores = score([row[key] for row in rows], references)
        metrics[key] = {protocol: scores[protocol] for protocol in ("mean_over_references", "best_of_references")}
        metrics["stats"][key] = generation_stats([row[key] for row in rows], references,
                                                 [row["dialogue"] for row in rows],
                                                 [row[f"{key}_stopped"] for row in rows])
    return metrics


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    folder = tmp_path_factory.mktemp("report")
    plot = plot_loss(trainer_state(), folder / "loss.png")
    return write_report(folder / "report.html", metrics_of(ROWS), ROWS, [plot])


def test_page_is_self_contained_escaped_and_holds_every_dialogues_scores(report):
    page = open(report, encoding="utf-8").read()
    assert not re.search(r"""(src|href)=["']?(https?:|//)""", page) and "<link" not in page
    assert page.count('src="data:image/png;base64,') == 1
    assert HOSTILE not in page and "<script>document.title" not in page and page.count("<script>") == 1
    assert "&lt;/pre&gt;&lt;/script&gt;" in page and "5 &lt; 6" in page and "Yes &amp; no." in page
    articles = re.findall(r"<article .*?</article>", page, re.S)
    assert [re.search(r'data-id="([^"]+)"', article).group(1) for article in articles] == [r["id"] for r in ROWS]
    tuned = score_each([row["tuned"] for row in ROWS], [row["references"] for row in ROWS])
    for article, scores in zip(articles, tuned):
        assert f'data-tuned="{scores["rougeL"]:.2f}"' in article
        assert f"ROUGE-2 {scores['rouge2']:.1f}" in article
    # What a reader should look at first: base's empty summary, the cut one, the invented #Person3#.
    assert 'data-flags="empty invented"' in articles[1] and "invented speaker: #Person3#" in articles[1]
    assert 'data-flags="cut"' in articles[2] and 'data-flags=""' in articles[3]
    assert "1 of 4: empty" in page and "1 of 4: cut at max_new_tokens" in page
    assert "<td>1 (25.00%)</td>" in page  # the stats table


def test_without_the_base_the_page_offers_no_gain_sorting(tmp_path):
    rows = [{**row, "base": None} for row in ROWS]
    page = build_report({"split": "validation"}, rows)
    assert 'value="gain"' not in page and "<th>base</th>" not in page
    with pytest.raises(ValueError, match="no predictions"):
        build_report({}, [])


def chromium(tmp_path, url, *options):
    binary = shutil.which("chromium")
    assert binary, "Debian's chromium is missing: .ci/run installs it (apt-get install -y chromium)"
    command = [binary, "--headless", "--disable-gpu", "--no-sandbox", "--no-first-run", "--enable-logging=stderr",
               "--v=0", "--virtual-time-budget=5000", f"--user-data-dir={tmp_path / 'profile'}", *options, url]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    console = [line for line in result.stderr.splitlines() if ":CONSOLE" in line]
    return result.stdout, console


def test_report_renders_in_headless_chromium_without_errors_and_sorts_and_filters(tmp_path, report):
    dom, console = chromium(tmp_path, f"file://{report}#selftest", "--dump-dom")
    result = re.search(r'<output id="selftest">([^<]*)</output>', dom).group(1)
    assert result.startswith("PASS"), result
    # The self-test's own line proves the console is captured; nothing else may be logged (no uncaught errors).
    assert len(console) == 1 and "report selftest: PASS" in console[0], console
    assert "injected" not in re.search(r"<title>(.*?)</title>", dom).group(1)


def test_the_browser_check_sees_a_script_error(tmp_path):
    broken = tmp_path / "broken.html"
    broken.write_text("<!DOCTYPE html><title>x</title><script>undefinedFunction();</script>")
    _, console = chromium(tmp_path, f"file://{broken}", "--dump-dom")
    assert any("Uncaught ReferenceError" in line for line in console), console
