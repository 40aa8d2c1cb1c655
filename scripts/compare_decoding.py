#!/usr/bin/env python
"""Time each decoding method (dialogsum_sft.decoding) on real weights and compare its summaries with the first run's.

Zero-shot summaries of the unique test dialogues, generated and decoded to text as scripts/evaluate.py does. Each
run is `method:batch`; the first is the reference (today's path: dynamic:64). Every run goes twice over the
dialogues: the first pass includes the warm-up (torch.compile, CUDA graphs), the second is the steady speed.

    python scripts/compare_decoding.py --model .cache/SmolLM2-135M-Instruct --data $DIALOGSUM_DIR \\
        --runs dynamic:64 dynamic:512 static:128 continuous:512 --output decoding.json
"""

import argparse
import json
import time

from dialogsum_sft.decoding import method_and_batch
from dialogsum_sft.errors import run_cli


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=".cache/SmolLM2-135M-Instruct")
    parser.add_argument("--data", required=True, help="DialogSum directory or Hub id")
    parser.add_argument("--split", default="test")
    parser.add_argument("--runs", nargs="+", type=method_and_batch, default=[("dynamic", 64), ("static", 128), ("continuous", 512)],
                        help="METHOD:BATCH runs; the first is the reference")
    parser.add_argument("--max_new_tokens", type=int, default=128)
    parser.add_argument("--max_samples", type=int, help="only the first N unique dialogues")
    parser.add_argument("--output", required=True)
    args = parser.parse_args(argv)

    import torch
    from transformers import GenerationConfig

    from dialogsum_sft.data import load_dialogsum, render_prompt, unique_dialogues
    from dialogsum_sft.decoding import decode
    from dialogsum_sft.generation import default_device, load_for_generation, resolve_dtype
    from dialogsum_sft.model import load_tokenizer, stop_token_ids
    from dialogsum_sft.rouge import score

    rows = unique_dialogues(load_dialogsum(args.data, (args.split,))[args.split])[:args.max_samples]
    references = [row["references"] for row in rows]
    tokenizer = load_tokenizer(args.model)
    stop_ids = stop_token_ids(tokenizer, GenerationConfig.from_pretrained(args.model))
    device = default_device()
    model = load_for_generation(args.model, None, dtype=resolve_dtype("auto", device), device=device, merge=False)
    prompts = [tokenizer(render_prompt(tokenizer, row["dialogue"]), add_special_tokens=False)["input_ids"]
               for row in rows]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop_ids[0]

    def synchronize():
        if device == "cuda":
            torch.cuda.synchronize()

    results, first = [], None
    for method, batch in args.runs:
        seconds = []
        try:
            for _ in range(2):
                synchronize()
                start = time.perf_counter()
                decoded = decode(model, prompts, stop_ids=stop_ids, pad_id=pad_id,
                                 max_new_tokens=args.max_new_tokens, batch_size=batch, method=method)
                synchronize()
                seconds.append(time.perf_counter() - start)
        except Exception as err:  # one method failing on this machine must not cost the others' numbers
            row = {"run": f"{method}:{batch}", "error": f"{type(err).__name__}: {err}"[:500]}
        else:
            summaries = [tokenizer.decode(d.tokens, skip_special_tokens=True).strip() for d in decoded]
            rouge = score(summaries, references)["mean_over_references"]
            first = first or (summaries, rouge)
            same = [a == b for a, b in zip(summaries, first[0])]
            row = {"run": f"{method}:{batch}", "method": method, "batch": batch, "dialogues": len(rows),
                   "seconds": round(seconds[1], 2), "seconds_first_pass": round(seconds[0], 2),
                   "dialogues_per_second": round(len(rows) / seconds[1], 2),
                   "hit_max_new_tokens": sum(not d.stopped for d in decoded),
                   "identical_to_first_run": sum(same), "rouge": rouge,
                   "rouge_minus_first_run": {key: round(value - first[1][key], 2) for key, value in rouge.items()},
                   "first_difference": next(({"index": i, "this": summaries[i], "first_run": first[0][i]}
                                             for i, equal in enumerate(same) if not equal), None)}
        results.append(row)
        print(json.dumps(row), flush=True)
        with open(args.output, "w") as handle:
            json.dump({"model": args.model, "split": args.split, "max_new_tokens": args.max_new_tokens,
                       "stop_ids": stop_ids, "results": results}, handle, indent=2)
    print(f"{'run':18} {'s':>7} {'s 1st':>7} {'dlg/s':>7} {'same':>5} {'dR-1':>6} {'dR-2':>6} {'dR-L':>6}")
    for row in results:
        if "error" in row:
            print(f"{row['run']:18} {row['error'][:100]}")
            continue
        delta = row["rouge_minus_first_run"]
        print(f"{row['run']:18} {row['seconds']:>7} {row['seconds_first_pass']:>7} {row['dialogues_per_second']:>7} "
              f"{row['identical_to_first_run']:>5} {delta['rouge1']:>6} {delta['rouge2']:>6} {delta['rougeL']:>6}")


if __name__ == "__main__":
    run_cli(main)
