#!/usr/bin/env python
"""Summarize dialogues with a trained adapter (local output dir or Hub repo id), prompted exactly as in training.

    python scripts/summarize.py --adapter outputs/run --input dialogue.txt
    python scripts/summarize.py --adapter you/adapter --base_model .cache/SmolLM2-135M-Instruct < dialogue.txt
    python scripts/summarize.py --adapter outputs/run --jsonl rows.jsonl --output rows_with_summaries.jsonl

Plain text (--input FILE, or stdin): one turn per line, as in DialogSum ("#Person1#: ..."); several dialogues are
separated by one or more blank lines. One summary is printed per dialogue, one line each, in input order.
JSON lines (--jsonl FILE): rows with a `dialogue` field; each row is written back with a `summary` field added.
"""

import json
import logging
import sys

from dialogsum_sft.adapters import open_adapter
from dialogsum_sft.data import read_dialogue_rows, read_dialogues
from dialogsum_sft.errors import ArgumentParser, DataError, check_output_path, run_cli
from dialogsum_sft.generation import GenerationOptions, add_generation_arguments, summarize, tuned_settings
from dialogsum_sft.logs import setup_logging


logger = logging.getLogger("summarize")


def parse_args(argv):
    parser = ArgumentParser(__doc__)
    parser.add_argument("--adapter", required=True, help="training output dir, or Hub repo id of an adapter")
    parser.add_argument("--revision", help="Hub revision of the adapter")
    parser.add_argument("--base_model", help="base model dir or Hub id (default: the local checkpoint it trained "
                                             "from if present, else adapter_config.json's Hub id)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--input", help="plain-text file: dialogues separated by blank lines (default: stdin)")
    source.add_argument("--jsonl", help="JSON lines with a `dialogue` field; writes the rows with a `summary` added")
    parser.add_argument("--output", help="write here instead of stdout")
    add_generation_arguments(parser, batch_size=16)
    args = parser.parse_args(argv)
    return args, GenerationOptions.from_args(args)


def main(argv=None):
    args, options = parse_args(argv)
    if args.output:
        check_output_path(args.output, "--output", directory=False)
    setup_logging()

    ###################
    # 1. Input files (before anything loads: a bad file fails in a second)
    ###################
    rows = dialogues = None
    if args.jsonl:
        rows = read_dialogue_rows(args.jsonl)
        dialogues = [row["dialogue"] for row in rows]
    elif args.input:
        try:
            with open(args.input, encoding="utf-8") as handle:
                dialogues = read_dialogues(handle, args.input)
        except OSError as err:
            raise DataError(f"cannot read {args.input}: {err.strerror}") from err
        except UnicodeDecodeError as err:
            raise DataError(f"{args.input} is not UTF-8 text ({err.reason} at byte {err.start}); re-save it as "
                            "UTF-8") from None

    ###################
    # 2. Adapter and its base model (checked before reading stdin, which may be typed by hand)
    ###################
    adapter = open_adapter(args.adapter, base_model=args.base_model, revision=args.revision)
    logger.info(f"base model: {adapter.base_model} ({adapter.base_model_source})")
    if dialogues is None:
        if sys.stdin.isatty():
            print("reading dialogues from stdin (blank line between dialogues, Ctrl-D to end)", file=sys.stderr)
        dialogues = read_dialogues(sys.stdin, "stdin")

    ###################
    # 3. Weights
    ###################
    model = tuned_settings(adapter.recipe, options.weights, options.dtype).load(adapter.base_model, adapter.directory)

    ###################
    # 4. Summaries
    ###################
    summaries = summarize(model, adapter.tokenizer, dialogues, batch_size=options.batch_size,
                          max_new_tokens=options.max_new_tokens, stop_ids=adapter.stop_ids, decoding=options.decoding,
                          progress=sys.stderr.isatty())
    if rows is not None:
        lines = [json.dumps({**row, "summary": summary}, ensure_ascii=False) for row, summary in zip(rows, summaries)]
    else:
        lines = [" ".join(summary.split()) for summary in summaries]  # one line per dialogue, whatever the model wrote
    text = "\n".join(lines) + "\n"
    if args.output:
        with open(args.output, "w", encoding="utf-8") as handle:
            handle.write(text)
    else:
        sys.stdout.write(text)


if __name__ == "__main__":
    run_cli(main)
