#!/usr/bin/env python
"""Redraw the PNGs of docs/benchmarks.md from the raw results committed under results/.

    python scripts/plot_results.py                     # writes docs/*.png
"""

import json
import os

from dialogsum_sft.errors import ArgumentParser, run_cli
from dialogsum_sft.plots import plot_benchmark, plot_loss, plot_rouge


def main(argv=None):
    parser = ArgumentParser(__doc__)
    parser.add_argument("--benchmarks", nargs="+", help="benchmark.py outputs; a set-up in several keeps its first row",
                        default=["results/benchmark-3b.json", "results/benchmark-3b-lean-generation.json",
                                 "results/benchmark-3b-profile.json", "results/benchmark-3b-b48.json",
                                 "results/benchmark-3b-b64.json"])
    parser.add_argument("--quality", default="results/gpu-quality", help="folder of trainer_state/eval_results.json")
    parser.add_argument("--out", default="docs")
    args = parser.parse_args(argv)

    rows = {}
    for path in args.benchmarks:
        with open(path, encoding="utf-8") as handle:
            for row in json.load(handle)["results"]:
                if "tokens_per_second" in row:
                    rows.setdefault(row["setup"], row)
    rows = sorted(rows.values(), key=lambda row: row["tokens_per_second"])
    title = "Llama-3.2-3B shape, QLoRA on one H100"
    plot_benchmark(rows, os.path.join(args.out, "benchmark-3b-throughput.png"), "tokens_per_second", "setup",
                   title, "real (non-padding) tokens per second")
    plot_benchmark(rows, os.path.join(args.out, "benchmark-3b-memory.png"), "peak_allocated_gib", "setup", title,
                   "peak GPU memory allocated (GiB)")
    plot_loss(os.path.join(args.quality, "trainer_state.json"), os.path.join(args.out, "loss-smollm2-gpu.png"))
    with open(os.path.join(args.quality, "eval_results.json"), encoding="utf-8") as handle:
        plot_rouge(json.load(handle), os.path.join(args.out, "rouge-smollm2-test.png"))


if __name__ == "__main__":
    run_cli(main)
