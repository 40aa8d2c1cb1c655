#!/usr/bin/env python
"""ROUGE of a trained adapter on DialogSum against its zero-shot base model, and publishing it to the Hub.

    python scripts/evaluate.py outputs/run                               # local training output dir
    python scripts/evaluate.py you/adapter --base_model .cache/SmolLM2-135M-Instruct --max_samples 50
    python scripts/evaluate.py outputs/run --push_to_hub --hub_model_id you/smollm2-dialogsum-qlora
    python scripts/evaluate.py outputs/run --push_only                   # publish an evaluated adapter as is

Writes eval_results.json (metrics in the shape card.py documents), eval_results.md, predictions.jsonl, rouge.png
and loss.png to --output_dir (default: <adapter dir>/eval, or ./eval-<name> for a Hub adapter). The zero-shot base
runs in bf16 (GPU) or float32 (CPU). The fine-tuned model, by default, merges the adapter into the base weights
rounded to NF4 exactly as training saw them (--weights; docs/benchmarks.md compares the choices).
"""

import argparse
import hashlib
import json
import logging
import shutil
import time
from pathlib import Path

from dialogsum_sft import embedded
from dialogsum_sft.card import PROTOCOL_LABELS, build_model_card
from dialogsum_sft.data import DATASET_HUB_ID, load_dialogsum, unique_dialogues
from dialogsum_sft.errors import DataError, UserError, run_cli
from dialogsum_sft.generation import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    TUNED_WEIGHTS,
    TUNED_WEIGHTS_HELP,
    default_device,
    load_for_generation,
    prepare_adapter,
    read_json,
    read_recipe,
    resolve_dtype,
    summarize,
    tuned_loading,
)
from dialogsum_sft.hub import HubError, as_hub_error, push_folder, resolve_adapter
from dialogsum_sft.model import is_local_path
from dialogsum_sft.plots import plot_loss, plot_rouge
from dialogsum_sft.rouge import PROTOCOL, PROTOCOLS, ROUGE_NAMES, ROUGE_TYPES, score
from dialogsum_sft.runinfo import run_info


logger = logging.getLogger("evaluate")

RESULTS = "eval_results.json"
PLOTS = ("rouge.png", "loss.png")
# What a published adapter repo holds from the training output dir; checkpoints, TensorBoard runs and the pickled
# training_args.bin stay local.
ADAPTER_FILES = (ADAPTER_WEIGHTS, ADAPTER_CONFIG)
OPTIONAL_FILES = (
    "generation_config.json", "chat_template.jinja", "tokenizer.json", "tokenizer_config.json",
    "special_tokens_map.json", "added_tokens.json", "tokenizer.model", "vocab.json", "merges.txt", "recipe.yaml",
    "train_results.json",
)  # fmt: skip


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("adapter", help="training output dir, or Hub repo id of an adapter")
    parser.add_argument("--revision", help="Hub revision of the adapter")
    parser.add_argument("--base_model", help="base model dir or Hub id (default: the local checkpoint it trained "
                                             "from if present, else adapter_config.json's Hub id)")
    parser.add_argument("--dataset", help=f"DialogSum dir of <split>.jsonl or Hub id (default: the recipe's, "
                                          f"else {DATASET_HUB_ID})")
    parser.add_argument("--split", default="test", choices=("test", "validation"))
    parser.add_argument("--max_samples", type=int, help="evaluate only the first N unique dialogues")
    parser.add_argument("--batch_size", type=int, default=64,
                        help="prompts generated together (a 3B model in bf16 peaks at about 22 GiB with 64)")
    parser.add_argument("--max_new_tokens", type=int, default=128)
    parser.add_argument("--dtype", default="auto", choices=("auto", "bfloat16", "float16", "float32"),
                        help="weights dtype (auto: bfloat16 on GPU, float32 on CPU)")
    parser.add_argument("--no_base", action="store_true", help="skip the zero-shot base model")
    parser.add_argument("--weights", default="auto", choices=("auto", *TUNED_WEIGHTS),
                        help=TUNED_WEIGHTS_HELP)
    parser.add_argument("--output_dir", help="default: <adapter dir>/eval, or ./eval-<name> for a Hub adapter")
    parser.add_argument("--push_to_hub", action="store_true",
                        help="publish the adapter and its card after evaluating")
    parser.add_argument("--push_only", action="store_true",
                        help=f"publish an adapter already evaluated into --output_dir ({RESULTS}) without generating")
    parser.add_argument("--hub_model_id", help="repo to push to, `name` or `namespace/name` (default: the recipe's)")
    parser.add_argument("--private", action="store_true", help="create the Hub repo private")
    args = parser.parse_args(argv)
    for name in ("max_samples", "batch_size", "max_new_tokens"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise UserError(f"--{name} must be at least 1; got {getattr(args, name)}")
    return args


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def default_output_dir(adapter: str, adapter_dir: Path) -> Path:
    if Path(adapter).expanduser().exists():
        return adapter_dir / "eval"
    return Path(f"eval-{adapter.rstrip('/').split('/')[-1]}")  # never write into the Hub cache


def hub_repo_id(args, recipe: dict) -> str:
    """The full `namespace/name` to push to; also checks the login before any long evaluation."""
    from huggingface_hub import HfApi, constants
    from huggingface_hub.utils import get_token

    name = args.hub_model_id or recipe.get("hub_model_id")
    if not name:
        raise UserError("--push_to_hub needs --hub_model_id (or hub_model_id in the recipe)")
    if get_token() is None:
        raise HubError("not logged in to the Hub: set HF_TOKEN or run `hf auth login` with a write token")
    try:
        user = HfApi().whoami()["name"]
    except Exception as err:
        hub_error = as_hub_error(err, name, endpoint=constants.ENDPOINT)
        if hub_error is None:
            raise
        raise hub_error from err
    return name if "/" in name else f"{user}/{name}"


def check_publishable(adapter_dir: Path) -> str:
    """The adapter's base model Hub id; refuses a local path, which nobody downloading the adapter could load."""
    hub_id = read_json(adapter_dir / ADAPTER_CONFIG).get("base_model_name_or_path") or ""
    if not hub_id or is_local_path(hub_id) or "\\" in hub_id:
        raise UserError(
            f"{adapter_dir / ADAPTER_CONFIG} names base model {hub_id!r}, not a Hub id: retrain with "
            "base_model_hub_id set, or set base_model_name_or_path to the base's Hub id (org/name)"
        )
    for name in ADAPTER_FILES:
        if not (adapter_dir / name).is_file():
            raise UserError(f"{adapter_dir} has no {name}: nothing to publish")
    return hub_id


def rouge_table(metrics: dict) -> list[str]:
    models = [("fine-tuned", metrics["tuned"])]
    if metrics.get("base") is not None:
        models.insert(0, ("base", metrics["base"]))
    columns = [(name, scores, protocol) for protocol in PROTOCOLS for name, scores in models]
    lines = ["| metric | " + " | ".join(f"{name}, {PROTOCOL_LABELS[p]}" for name, _, p in columns) + " |",
             "|---" * (len(columns) + 1) + "|"]
    for rouge_type in ROUGE_TYPES:
        values = " | ".join(f"{scores[protocol][rouge_type]:.2f}" for _, scores, protocol in columns)
        lines.append(f"| {ROUGE_NAMES[rouge_type]} | {values} |")
    return lines


def write_report(metrics: dict, path: Path) -> None:
    timing = ", ".join(f"{name} {t['seconds']:.1f} s ({t['dialogues_per_second']:.3g} dialogues/s)"
                       for name, t in metrics["timing"].items())
    settings = ", ".join(f"`{key}={value}`" for key, value in metrics["generation"].items())
    lines = [
        f"# DialogSum {metrics['split']}: base vs fine-tuned",
        "",
        f"Adapter `{metrics['adapter']}` on base `{metrics['base_model']}` ({metrics['base_model_hub_id']}); "
        f"{metrics['num_dialogues']} dialogues, {metrics['num_pairs']} dialogue-reference pairs. "
        "*Mean over references* is the DialogSum paper's protocol; *best of references* is always higher and not "
        "comparable with it.",
        "",
        *rouge_table(metrics),
        "",
        f"Protocol: {metrics['protocol']}.",
        "",
        f"Generation: {settings}. Time: {timing} on {metrics['device']}.",
    ]
    if metrics.get("base") is None:
        lines += ["", "The base model was not evaluated (--no_base)."]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_plots(metrics: dict, adapter_dir: Path, folder: Path) -> list[str]:
    """rouge.png, and loss.png when the adapter dir has a trainer_state.json with logged losses."""
    written = [Path(plot_rouge(metrics, folder / PLOTS[0])).name]
    state = adapter_dir / "trainer_state.json"
    if state.is_file():
        try:
            written.append(Path(plot_loss(state, folder / PLOTS[1])).name)
        except ValueError as err:
            logger.warning(f"no loss plot: {err}")
    return written


def load_results(adapter_dir: Path, output_dir: Path) -> dict:
    """The evaluation of exactly these adapter weights, or a one-line refusal: no adapter is pushed without one."""
    results = output_dir / RESULTS
    if not results.is_file():
        raise UserError(
            f"no {RESULTS} in {output_dir}: evaluate the adapter first (a quick run: --max_samples 50), or point "
            "--output_dir at its evaluation"
        )
    metrics = read_json(results)
    if metrics.get("adapter_sha256") != sha256(adapter_dir / ADAPTER_WEIGHTS):
        raise UserError(f"{results} was computed for other adapter weights than {adapter_dir}: evaluate it again")
    return metrics


def stage_for_hub(adapter_dir: Path, output_dir: Path, metrics: dict, staging: Path, repo_id: str) -> None:
    """Fill `staging` with exactly what the Hub repo gets: adapter, tokenizer, recipe, metrics, plots, card."""
    from huggingface_hub.utils import get_token

    base_hub_id = check_publishable(adapter_dir)
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for name in ADAPTER_FILES + OPTIONAL_FILES:
        if (adapter_dir / name).is_file():
            shutil.copy2(adapter_dir / name, staging / name)
    shutil.copy2(output_dir / RESULTS, staging / RESULTS)
    plots = write_plots(metrics, adapter_dir, staging)
    recipe = read_recipe(adapter_dir)
    # The embedded SmolLM2 is a dequantized GGUF, not the Hub's weights: say so wherever it is the base.
    embedded_base = base_hub_id == embedded.HUB_ID and recipe.get("model_name_or_path") != embedded.HUB_ID
    try:
        card = build_model_card(
            repo_id=repo_id, base_model_hub_id=base_hub_id, metrics=metrics, recipe=recipe, plots=plots,
            base_model_note=embedded.PROVENANCE if embedded_base else None,
        )
    except ValueError as err:
        raise UserError(f"cannot write the model card from {output_dir / RESULTS}: {err}") from err
    card.save(staging / "README.md")
    token = get_token()
    for path in staging.iterdir():
        if token and token.encode() in path.read_bytes():
            raise UserError(f"{path.name} holds your Hub token; remove it before pushing")


def publish(args, adapter_dir: Path, output_dir: Path, repo_id: str) -> None:
    metrics = load_results(adapter_dir, output_dir)
    if metrics.get("max_samples"):
        logger.warning(f"the card's scores cover only the first {metrics['num_dialogues']} {metrics['split']} "
                       "dialogues (--max_samples); evaluate the whole split for scores comparable with papers")
    staging = output_dir / "hub"
    stage_for_hub(adapter_dir, output_dir, metrics, staging, repo_id)
    rouge_l = metrics["tuned"]["mean_over_references"]["rougeL"]
    url = push_folder(staging, repo_id, private=args.private,
                      commit_message=f"Upload DialogSum QLoRA adapter (ROUGE-L {rouge_l:.2f})")
    print(f"pushed {len(list(staging.iterdir()))} files from {staging} to {repo_id}: {url}")


def generate(label: str, adapter, adapter_dir, dialogues: list[str], args, load: dict) -> tuple[list[str], dict]:
    """Summaries and timing of one model, loaded fresh and freed before the next one loads."""
    import gc

    import torch

    model = load_for_generation(adapter.base_model, adapter_dir, **load)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    summaries = summarize(model, adapter.tokenizer, dialogues, batch_size=args.batch_size,
                          max_new_tokens=args.max_new_tokens, stop_ids=adapter.stop_ids)
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


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)

    ###################
    # 1. Adapter, output dir, Hub repo (checked before any long generation)
    ###################
    if args.push_only:
        adapter_dir = resolve_adapter(args.adapter, revision=args.revision)
        output_dir = Path(args.output_dir) if args.output_dir else default_output_dir(args.adapter, adapter_dir)
        check_publishable(adapter_dir)
        load_results(adapter_dir, output_dir)
        publish(args, adapter_dir, output_dir, hub_repo_id(args, read_recipe(adapter_dir)))
        return
    adapter = prepare_adapter(args.adapter, base_model=args.base_model, revision=args.revision)
    logger.info(f"base model: {adapter.base_model} ({adapter.base_model_source})")
    repo_id = None
    if args.push_to_hub:
        check_publishable(adapter.directory)
        repo_id = hub_repo_id(args, adapter.recipe)
    output_dir = Path(args.output_dir) if args.output_dir else default_output_dir(args.adapter, adapter.directory)

    ###################
    # 2. Data: one row per dialogue with all its references
    ###################
    dataset_name = args.dataset or adapter.recipe.get("dataset_name") or DATASET_HUB_ID
    rows = unique_dialogues(load_dialogsum(dataset_name, (args.split,))[args.split])
    if args.max_samples:
        rows = rows[:args.max_samples]
    dialogues = [row["dialogue"] for row in rows]
    references = [row["references"] for row in rows]
    if not rows:
        raise DataError(f"no dialogues in the {args.split} split of {dataset_name}")

    ###################
    # 3. Generation: zero-shot base, then base + adapter, each loaded fresh
    ###################
    device = default_device()
    dtype = resolve_dtype(args.dtype, device)
    weights, tuned_load = tuned_loading(adapter.recipe, args.weights, dtype, device)
    predictions, timing = {"base": None}, {}
    if not args.no_base:
        base_load = dict(dtype=dtype, device=device, merge=False)  # the published base model, as users get it
        predictions["base"], timing["base"] = generate("base", adapter, None, dialogues, args, base_load)
    predictions["tuned"], timing["tuned"] = generate("fine-tuned", adapter, adapter.directory, dialogues, args,
                                                     tuned_load)

    ###################
    # 4. Scores, predictions, report, plots
    ###################
    scores = {name: score(preds, references) for name, preds in predictions.items() if preds is not None}
    metrics = {
        "split": args.split,
        "num_dialogues": scores["tuned"]["num_dialogues"],
        "num_pairs": scores["tuned"]["num_pairs"],
        "protocol": PROTOCOL,
        "tuned": {protocol: scores["tuned"][protocol] for protocol in PROTOCOLS},
        "base": {protocol: scores["base"][protocol] for protocol in PROTOCOLS} if "base" in scores else None,
        "generation": {
            "max_new_tokens": args.max_new_tokens, "do_sample": False, "num_beams": 1,
            "stop_token_ids": adapter.stop_ids, "batch_size": args.batch_size,
            "dtype": str(tuned_load["dtype"]).split(".")[-1], "tuned_weights": weights,
            "tuned_weights_description": TUNED_WEIGHTS[weights],
        },
        "adapter": args.adapter,
        "adapter_revision": args.revision,
        "adapter_sha256": sha256(adapter.directory / ADAPTER_WEIGHTS),
        "base_model_hub_id": adapter.base_model_hub_id,
        "base_model": adapter.base_model,
        "dataset": dataset_name,
        "max_samples": args.max_samples,
        "timing": timing,
        **run_info(),
    }
    output_dir.mkdir(parents=True, exist_ok=True)
    with open(output_dir / "predictions.jsonl", "w", encoding="utf-8") as handle:
        for index, row in enumerate(rows):
            base = predictions["base"][index] if predictions["base"] is not None else None
            handle.write(json.dumps({**row, "base": base, "tuned": predictions["tuned"][index]}) + "\n")
    write_report(metrics, output_dir / "eval_results.md")
    write_plots(metrics, adapter.directory, output_dir)
    with open(output_dir / RESULTS, "w", encoding="utf-8") as handle:  # last: its presence means complete
        json.dump(metrics, handle, indent=2)
    print("\n".join(rouge_table(metrics)))
    print(f"results in {output_dir}")

    ###################
    # 5. Publish
    ###################
    if repo_id:
        publish(args, adapter.directory, output_dir, repo_id)


if __name__ == "__main__":
    run_cli(main)
