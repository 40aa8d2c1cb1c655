#!/usr/bin/env python
"""ROUGE of a trained adapter on DialogSum against its zero-shot base model, and publishing it to the Hub.

    python scripts/evaluate.py outputs/run                               # local training output dir
    python scripts/evaluate.py you/adapter --base_model .cache/SmolLM2-135M-Instruct --max_samples 50
    python scripts/evaluate.py outputs/run --push_to_hub --hub_model_id you/smollm2-dialogsum-qlora
    python scripts/evaluate.py outputs/run --push_only                   # publish an evaluated adapter as is

Writes eval_results.json (metrics in the shape card.EvalMetrics documents), eval_results.md, predictions.jsonl,
report.html (every dialogue with both summaries, sortable and filterable), rouge.png and loss.png to
--output_dir (default: <adapter dir>/eval, or ./eval-<name> for a Hub adapter). The zero-shot base runs in bf16
(GPU) or float32 (CPU). The fine-tuned model, by default, merges the adapter into the base weights rounded to NF4
exactly as training saw them (--weights; docs/benchmarks.md compares the choices).
"""

from pathlib import Path

from dialogsum_sft.adapters import open_adapter, read_recipe
from dialogsum_sft.card import rouge_table, stats_table
from dialogsum_sft.data import DATASET_HUB_ID
from dialogsum_sft.errors import ArgumentParser, UserError, check_output_path, run_cli
from dialogsum_sft.evaluation import RESULTS, default_output_dir, evaluate
from dialogsum_sft.generation import GenerationOptions, add_generation_arguments
from dialogsum_sft.hub import resolve_adapter
from dialogsum_sft.logs import setup_logging
from dialogsum_sft.publish import STAGING_DIR, check_publishable, hub_repo_id, load_results, push_adapter


def parse_args(argv):
    parser = ArgumentParser(__doc__)
    parser.add_argument("adapter", help="training output dir, or Hub repo id of an adapter")
    parser.add_argument("--revision", help="Hub revision of the adapter")
    parser.add_argument("--base_model", help="base model dir or Hub id (default: the local checkpoint it trained "
                                             "from if present, else adapter_config.json's Hub id)")
    parser.add_argument("--dataset", help=f"DialogSum dir of <split>.jsonl or Hub id (default: the recipe's, "
                                          f"else {DATASET_HUB_ID})")
    parser.add_argument("--split", default="test", choices=("test", "validation"))
    parser.add_argument("--max_samples", type=int, help="evaluate only the first N unique dialogues")
    parser.add_argument("--named_speakers", action="store_true",
                        help="evaluate the split with every #PersonN# tag replaced by a first name, in the dialogue "
                             "and its references alike (how the model does on chats that name their speakers)")
    add_generation_arguments(parser, batch_size=64,
                             batch_size_help="prompts generated together (a 3B model in bf16 peaks at about 22 GiB "
                                             "with 64)")
    parser.add_argument("--no_base", action="store_true", help="skip the zero-shot base model")
    parser.add_argument("--output_dir", help="default: <adapter dir>/eval, or ./eval-<name> for a Hub adapter")
    parser.add_argument("--push_to_hub", action="store_true",
                        help="publish the adapter and its card after evaluating")
    parser.add_argument("--push_only", action="store_true",
                        help=f"publish an adapter already evaluated into --output_dir ({RESULTS}) without generating")
    parser.add_argument("--hub_model_id", help="repo to push to, `name` or `namespace/name` (default: the recipe's)")
    parser.add_argument("--private", action="store_true", help="create the Hub repo private")
    args = parser.parse_args(argv)
    if args.max_samples is not None and args.max_samples < 1:
        raise UserError(f"--max_samples must be at least 1; got {args.max_samples}")
    return args, GenerationOptions.from_args(args)


def push(args, adapter_dir: Path, output_dir: Path, repo_id: str) -> None:
    url = push_adapter(adapter_dir, output_dir, repo_id, private=args.private)
    staging = output_dir / STAGING_DIR
    print(f"pushed {len(list(staging.iterdir()))} files from {staging} to {repo_id}: {url}")


def main(argv=None):
    args, options = parse_args(argv)
    setup_logging()

    if args.push_only:
        adapter_dir = resolve_adapter(args.adapter, revision=args.revision)
        output_dir = Path(args.output_dir) if args.output_dir else default_output_dir(args.adapter, adapter_dir)
        check_publishable(adapter_dir)
        load_results(adapter_dir, output_dir)
        push(args, adapter_dir, output_dir, hub_repo_id(args.hub_model_id, read_recipe(adapter_dir)))
        return

    # The adapter, its base and the Hub login are checked before any long generation.
    if args.output_dir:
        check_output_path(args.output_dir, "--output_dir")
    adapter = open_adapter(args.adapter, base_model=args.base_model, revision=args.revision)
    repo_id = None
    if args.push_to_hub:
        check_publishable(adapter.directory)
        repo_id = hub_repo_id(args.hub_model_id, adapter.recipe)
    output_dir = Path(args.output_dir) if args.output_dir else default_output_dir(args.adapter, adapter.directory)
    check_output_path(output_dir, "--output_dir")

    metrics = evaluate(adapter, output_dir, options, adapter_name=args.adapter, revision=args.revision,
                       dataset=args.dataset, split=args.split, max_samples=args.max_samples,
                       with_base=not args.no_base, named_speakers=args.named_speakers)
    print("\n".join(rouge_table(metrics) + [""] + stats_table(metrics)))
    print(f"results in {output_dir}")
    if repo_id:
        push(args, adapter.directory, output_dir, repo_id)


if __name__ == "__main__":
    run_cli(main)
