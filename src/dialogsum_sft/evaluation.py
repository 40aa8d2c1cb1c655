"""ROUGE of a trained adapter on DialogSum against its zero-shot base: generate, score, write the results.

`evaluate` writes to its output directory predictions.jsonl (with each summary's stop flag), eval_results.md,
rouge.png, loss.png (when the adapter dir has a trainer_state.json), report.html (the human-evaluation page,
report.py) and eval_results.json last: its presence means the evaluation is complete. Besides ROUGE the results
hold generation stats (stats.py) and the first dialogues as examples for the card.
"""

from __future__ import annotations

import gc
import json
import logging
import time
from pathlib import Path

from huggingface_hub.utils.sha import sha_fileobj

from .adapters import ADAPTER_WEIGHTS, Adapter
from .card import EXAMPLES, EvalMetrics, rouge_table, stats_table
from .data import DATASET_HUB_ID, load_dialogsum, unique_dialogues
from .errors import DataError
from .generation import (
    TUNED_WEIGHTS,
    GenerationOptions,
    LoadSettings,
    Summary,
    base_settings,
    generate_summaries,
    tuned_settings,
)
from .plots import plot_loss, plot_rouge
from .report import REPORT as HTML_REPORT
from .report import write_report as write_html_report
from .rouge import PROTOCOL, PROTOCOLS, score
from .runinfo import run_info
from .speakers import named_variant
from .stats import generation_stats


logger = logging.getLogger(__name__)

RESULTS = "eval_results.json"
REPORT = "eval_results.md"
PREDICTIONS = "predictions.jsonl"
PLOTS = ("rouge.png", "loss.png")


def adapter_sha256(adapter_dir: Path) -> str:
    with open(adapter_dir / ADAPTER_WEIGHTS, "rb") as handle:
        return sha_fileobj(handle).hex()


def default_output_dir(adapter: str, adapter_dir: Path) -> Path:
    if Path(adapter).expanduser().exists():
        return adapter_dir / "eval"
    return Path(f"eval-{adapter.rstrip('/').split('/')[-1]}")  # never write into the Hub cache


def load_rows(dataset_name: str, split: str, max_samples: int | None) -> list[dict]:
    """One row per dialogue with all its references, the first `max_samples` only if given."""
    rows = unique_dialogues(load_dialogsum(dataset_name, (split,))[split])
    if max_samples:
        rows = rows[:max_samples]
    if not rows:
        raise DataError(f"no dialogues in the {split} split of {dataset_name}")
    return rows


def generate(label: str, adapter: Adapter, adapter_dir: Path | None, dialogues: list[str], options: GenerationOptions,
             settings: LoadSettings) -> tuple[list[Summary], dict]:
    """Summaries and timing of one model, loaded fresh and freed before the next one loads."""
    import torch

    model = settings.load(adapter.base_model, adapter_dir)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    summaries = generate_summaries(model, adapter.tokenizer, dialogues, batch_size=options.batch_size,
                                   max_new_tokens=options.max_new_tokens, stop_ids=adapter.stop_ids,
                                   decoding=options.decoding)
    seconds = time.perf_counter() - start
    timing = {"seconds": round(seconds, 2), "dialogues_per_second": round(len(dialogues) / seconds, 3)}
    if torch.cuda.is_available():
        timing["peak_gpu_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    logger.info(f"{label}: {len(dialogues)} dialogues in {seconds:.1f} s")
    del model
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return summaries, timing


def evaluate(
    adapter: Adapter,
    output_dir: Path,
    options: GenerationOptions,
    *,
    adapter_name: str,
    revision: str | None = None,
    dataset: str | None = None,
    split: str = "test",
    max_samples: int | None = None,
    with_base: bool = True,
    named_speakers: bool = False,
) -> EvalMetrics:
    """Generate with the zero-shot base (unless `with_base` is False) and the fine-tuned model, score, write.

    `named_speakers` evaluates the split's named-speaker variant (`speakers.named_variant`: every #PersonN# tag a
    first name, in the dialogue and its references alike)."""
    dataset_name = dataset or adapter.recipe.get("dataset_name") or DATASET_HUB_ID
    rows = load_rows(dataset_name, split, max_samples)
    if named_speakers:
        rows = named_variant(rows)
    logger.info(f"{len(rows)} {split} dialogues from {dataset_name}; base model: {adapter.base_model} "
                f"({adapter.base_model_source})")
    dialogues = [row["dialogue"] for row in rows]
    tuned = tuned_settings(adapter.recipe, options.weights, options.dtype)
    predictions, timing = {"base": None}, {}
    if with_base:
        predictions["base"], timing["base"] = generate("base", adapter, None, dialogues, options,
                                                       base_settings(options.dtype, tuned.device))
    predictions["tuned"], timing["tuned"] = generate("fine-tuned", adapter, adapter.directory, dialogues, options,
                                                     tuned)
    references = [row["references"] for row in rows]
    generated = {name: summaries for name, summaries in predictions.items() if summaries is not None}
    texts = {name: [summary.text for summary in summaries] for name, summaries in generated.items()}
    scores = {name: score(texts[name], references) for name in generated}
    stats = {name: generation_stats(texts[name], references, dialogues, [summary.stopped for summary in summaries])
             for name, summaries in generated.items()}
    written = [{**row, "base": texts["base"][index] if "base" in texts else None, "tuned": texts["tuned"][index],
                **{f"{name}_stopped": generated[name][index].stopped for name in generated}}
               for index, row in enumerate(rows)]
    metrics: EvalMetrics = {
        "split": split,
        "num_dialogues": scores["tuned"]["num_dialogues"],
        "num_pairs": scores["tuned"]["num_pairs"],
        "protocol": PROTOCOL,
        "tuned": {protocol: scores["tuned"][protocol] for protocol in PROTOCOLS},
        "base": {protocol: scores["base"][protocol] for protocol in PROTOCOLS} if "base" in scores else None,
        "generation": {
            "max_new_tokens": options.max_new_tokens, "do_sample": False, "num_beams": 1,
            "stop_token_ids": adapter.stop_ids, "batch_size": options.batch_size,
            "dtype": str(tuned.dtype).split(".")[-1], "tuned_weights": tuned.weights,
            "tuned_weights_description": TUNED_WEIGHTS[tuned.weights], "decoding": options.decoding,
        },
        "adapter": adapter_name,
        "adapter_revision": revision,
        "adapter_sha256": adapter_sha256(adapter.directory),
        "base_model_hub_id": adapter.base_model_hub_id,
        "base_model": adapter.base_model,
        "dataset": dataset_name,
        "max_samples": max_samples,
        "timing": timing,
        "speakers": "named" if named_speakers else "tags",
        "stats": stats,
        "examples": [{key: row[key] for key in ("id", "dialogue", "references", "base", "tuned")}
                     for row in written[:EXAMPLES]],
        **run_info(),
    }
    write_results(metrics, written, adapter.directory, output_dir)
    return metrics


def write_results(metrics: EvalMetrics, rows: list[dict], adapter_dir: Path, output_dir: Path):
    """`rows`: predictions.jsonl's, one per dialogue with its references, base and tuned summaries, stop flags."""
    output_dir.mkdir(parents=True, exist_ok=True)
    with open(output_dir / PREDICTIONS, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
    write_report(metrics, output_dir / REPORT)
    plots = write_plots(metrics, adapter_dir, output_dir)
    write_html_report(output_dir / HTML_REPORT, metrics, rows, [output_dir / plot for plot in plots])
    with open(output_dir / RESULTS, "w", encoding="utf-8") as handle:  # last: its presence means complete
        json.dump(metrics, handle, indent=2)


def write_report(metrics: EvalMetrics, path: Path) -> None:
    timing = ", ".join(f"{name} {t['seconds']:.1f} s ({t['dialogues_per_second']:.3g} dialogues/s)"
                       for name, t in metrics["timing"].items())
    settings = ", ".join(f"`{key}={value}`" for key, value in metrics["generation"].items())
    speakers = " (named-speaker variant: tags replaced by names)" if metrics.get("speakers") == "named" else ""
    lines = [
        f"# DialogSum {metrics['split']}{speakers}: base vs fine-tuned",
        "",
        f"Adapter `{metrics['adapter']}` on base `{metrics['base_model']}` ({metrics['base_model_hub_id']}); "
        f"{metrics['num_dialogues']} dialogues, {metrics['num_pairs']} dialogue-reference pairs. "
        "*Mean over references* is the DialogSum paper's protocol; *best of references* is always higher and not "
        "comparable with it.",
        "",
        *rouge_table(metrics),
        "",
        *stats_table(metrics),
        "",
        f"Protocol: {metrics['protocol']}.",
        "",
        f"Generation: {settings}. Time: {timing} on {metrics['device']}.",
    ]
    if metrics.get("base") is None:
        lines += ["", "The base model was not evaluated (--no_base)."]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_plots(metrics: EvalMetrics, adapter_dir: Path, folder: Path) -> list[str]:
    """rouge.png, and loss.png when the adapter dir has a trainer_state.json with logged losses."""
    written = [Path(plot_rouge(metrics, folder / PLOTS[0])).name]
    state = adapter_dir / "trainer_state.json"
    if state.is_file():
        try:
            written.append(Path(plot_loss(state, folder / PLOTS[1])).name)
        except ValueError as err:
            logger.warning(f"no loss plot: {err}")
    return written
