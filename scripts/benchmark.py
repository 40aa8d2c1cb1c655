#!/usr/bin/env python
"""Training speed and memory of QLoRA set-ups on Llama-3.2-3B's exact shape (random weights), one GPU.

Each set-up runs in its own process (clean CUDA memory statistics) on sequences with DialogSum's real token
lengths, and reports real (non-padding) tokens per second after warm-up and the peak GPU memory.

    python scripts/benchmark.py --output results/benchmark.json                 # every set-up
    python scripts/benchmark.py --setups seed ours-fast --steps 20 --output x.json
    python scripts/benchmark.py --setups --generation_methods dynamic:64 static:256 continuous:512 \
        --output gen.json                                                       # generation speed only
"""

import argparse
import json
import os
import subprocess
import sys
import time

from dialogsum_sft.decoding import DECODING_METHODS, method_and_batch
from dialogsum_sft.errors import ArgumentParser, run_cli
from dialogsum_sft.runinfo import run_info


# meta-llama/Llama-3.2-3B-Instruct's config.json (the weights are gated and unreachable here; the shape is public).
LLAMA_32_3B = dict(
    vocab_size=128256, hidden_size=3072, intermediate_size=8192, num_hidden_layers=28, num_attention_heads=24,
    num_key_value_heads=8, head_dim=128, max_position_embeddings=131072, rms_norm_eps=1e-5, tie_word_embeddings=True,
    hidden_act="silu", bos_token_id=128000, eos_token_id=[128001, 128008, 128009],
    rope_parameters=dict(rope_type="llama3", rope_theta=500000.0, factor=32.0, low_freq_factor=1.0,
                         high_freq_factor=4.0, original_max_position_embeddings=8192),
)
PAD_ID = 128004  # <|finetune_right_pad_id|>
GENERATION = "generation-"  # `--one` name of a generation-speed process: generation-<decoding method>

# TRL SFTTrainer with this project's LoRA (r16 on all linear layers) and no checkpointing; set-ups change from here.
TRL = dict(trainer="trl", batch=32, accum=1, checkpointing=False, optim="adamw_torch_fused", r=16, dropout=0.05,
           targets="all-linear", padding_free=True, attn="sdpa_varlen")
# The recipe's fast setting: padding-free batches of 64, no checkpointing, lora_dropout 0 (PEFT's LoRA path).
FAST = {**TRL, "batch": 64, "dropout": 0.0}
# The peers every result is compared with, by the JSON key of its ratio.
PEERS = {"ratio_to_trl_liger": "trl-liger-b64", "ratio_to_trl_liger_padded": "trl-padded-liger",
         "ratio_to_trl_padded": "trl-padded"}
# name: (description, trainer settings). "seed" is the notebook this project replaces.
SETUPS = {
    "seed": ("seed notebook: transformers.Trainer, batch 1 x accum 4, grad. checkpointing, paged_adamw_8bit, "
             "LoRA r32 q/k/v/o, loss on the whole sequence",
             dict(trainer="transformers", batch=1, accum=4, checkpointing=True, optim="paged_adamw_8bit", r=32,
                  dropout=0.05, targets=["q_proj", "k_proj", "v_proj", "o_proj"], padding_free=False, attn="sdpa")),
    "trl-padded": ("stock TRL SFTTrainer: padded batches of 16, no checkpointing, r16 all-linear",
                   {**TRL, "batch": 16, "padding_free": False, "attn": "sdpa"}),
    "ours-fast": ("this recipe, fastest: padding-free batches of 32 on PyTorch's varlen FlashAttention-2 "
                  "(sdpa_varlen), fused LM-head loss, no checkpointing", TRL),
    "ours-fast-sdpa": ("padding-free batches of 32 with sdpa (dense block-diagonal mask), no checkpointing",
                       {**TRL, "attn": "sdpa"}),
    "ours-fast-nodropout": ("the fast setting with lora_dropout 0 (PEFT then skips the dropout copy of each "
                            "projection's input)", {**TRL, "dropout": 0.0}),
    "ours-fast-b48": ("the fast setting with lora_dropout 0 and batches of 48", {**TRL, "dropout": 0.0, "batch": 48}),
    "ours-fast-b64": ("the fast setting with lora_dropout 0 and batches of 64", {**TRL, "dropout": 0.0, "batch": 64}),
    "ours-grouped": ("padded batches of 32 grouped by length, no checkpointing",
                     {**TRL, "padding_free": False, "attn": "sdpa", "group_by_length": True}),
    "ours-lean": ("this recipe, lean: padding-free batches of 8 x accum 4 on sdpa_varlen, gradient checkpointing",
                  {**TRL, "batch": 8, "accum": 4, "checkpointing": True}),
    "ours-lean-b16": ("this recipe, lean with bigger batches: padding-free 16 x accum 2 on sdpa_varlen, "
                      "gradient checkpointing", {**TRL, "batch": 16, "accum": 2, "checkpointing": True}),
    # Peers and each speed technique on its own (issue 11). FAST is this recipe's fast setting on PEFT's path.
    "trl-padded-liger": ("stock TRL padded batches of 16 + use_liger_kernel (RMSNorm, RoPE, SwiGLU kernels)",
                         {**TRL, "batch": 16, "padding_free": False, "attn": "sdpa", "liger": True}),
    "trl-liger-b64": ("peer at our batch: TRL + use_liger_kernel, padding-free 64, no ckpt, lora_dropout 0, "
                      "PEFT's LoRA path", {**FAST, "liger": True}),
    "ours-fast-liger": ("the fast setting + use_liger_kernel", {**FAST, "liger": True}),
    "ours-fast-fused": ("the fast setting on the fused QLoRA path (fused_lora)", {**FAST, "fused": True}),
    "ours-fast-fused-liger": ("the fast setting, fused QLoRA path + use_liger_kernel",
                              {**FAST, "fused": True, "liger": True}),
    "ours-fast-fused-liger-compile": ("the fast setting, fused + Liger + each decoder layer torch.compiled "
                                      "(compile_layers, dynamic shapes)",
                                      {**FAST, "fused": True, "liger": True, "compile": True}),
    "lean-fused-liger-b32": ("lean: padding-free 32, gradient checkpointing, fused + Liger, lora_dropout 0",
                             {**FAST, "batch": 32, "checkpointing": True, "fused": True, "liger": True}),
    "lean-fused-liger-b40": ("lean: padding-free 40, gradient checkpointing, fused + Liger, lora_dropout 0",
                             {**FAST, "batch": 40, "checkpointing": True, "fused": True, "liger": True}),
    "lean-fused-liger-b48": ("lean: padding-free 48, gradient checkpointing, fused + Liger, lora_dropout 0",
                             {**FAST, "batch": 48, "checkpointing": True, "fused": True, "liger": True}),
    "lean-fused-liger-b64": ("lean: padding-free 64, gradient checkpointing, fused + Liger, lora_dropout 0",
                             {**FAST, "checkpointing": True, "fused": True, "liger": True}),
    "lean-fused-liger-offload-b16": ("lean: padding-free 16, TRL's activation_offloading instead of "
                                     "checkpointing, fused + Liger", {**FAST, "batch": 16, "fused": True,
                                                                      "liger": True, "offload": True}),
}


def dialogsum_lengths(data_dir: str, tokenizer_dir: str, count: int) -> list[tuple[int, int]]:
    """(prompt, completion) token counts of the first `count` training rows, rendered as training renders them."""
    from transformers import AutoTokenizer

    from dialogsum_sft.data import load_dialogsum, token_lengths

    rows = load_dialogsum(data_dir, ("train",))["train"].select(range(count))
    prompts, totals = token_lengths(rows, AutoTokenizer.from_pretrained(tokenizer_dir))
    return [(prompt, total - prompt) for prompt, total in zip(prompts, totals) if total <= 1024]


def build_model_dir(path: str) -> None:
    """Save a randomly initialised Llama-3.2-3B once, so every set-up loads it through bitsandbytes like a real one."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    if os.path.isfile(os.path.join(path, "config.json")):
        return
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM(LlamaConfig(**LLAMA_32_3B, dtype="bfloat16")).to(torch.bfloat16)
    model.save_pretrained(path)


def run_setup(name: str, model_dir: str, lengths: list[tuple[int, int]], steps: int, warmup: int,
              profile: str | None = None) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig, Trainer, TrainerCallback, TrainingArguments

    from dialogsum_sft.attention import register_varlen_attention
    from dialogsum_sft.configs import SFTConfig
    from dialogsum_sft.trainer import QLoRASFTTrainer

    register_varlen_attention()
    _, spec = SETUPS[name]
    generator = torch.Generator().manual_seed(0)
    ids = [torch.randint(1000, 128000, (p + c,), generator=generator).tolist() for p, c in lengths]
    quantization = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16, bnb_4bit_quant_storage=torch.bfloat16,
    )
    model = AutoModelForCausalLM.from_pretrained(model_dir, quantization_config=quantization, dtype=torch.bfloat16,
                                                 attn_implementation=spec["attn"], device_map={"": 0})
    lora = LoraConfig(r=spec["r"], lora_alpha=2 * spec["r"], lora_dropout=spec["dropout"], target_modules=spec["targets"],
                      task_type="CAUSAL_LM")
    common = dict(output_dir=f"/tmp/bench-{name}", per_device_train_batch_size=spec["batch"],
                  gradient_accumulation_steps=spec["accum"], gradient_checkpointing=spec["checkpointing"],
                  optim=spec["optim"], learning_rate=2e-4, max_steps=warmup + steps + (2 if profile else 0), bf16=True,
                  logging_steps=1000,
                  save_strategy="no", report_to="none", dataloader_num_workers=2, seed=0,
                  train_sampling_strategy="group_by_length" if spec.get("group_by_length") else "random")

    class Clock(TrainerCallback):
        """Real tokens and wall time of the steps after warm-up (the CUDA queue drained at both ends)."""

        def __init__(self):
            self.start = self.end = None

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == warmup:
                torch.cuda.synchronize()
                self.start, self.tokens_at_start = time.perf_counter(), state.num_input_tokens_seen
            if state.global_step == warmup + steps:
                torch.cuda.synchronize()
                self.end, self.tokens_at_end = time.perf_counter(), state.num_input_tokens_seen

    class Profile(TrainerCallback):
        """A torch.profiler table of two extra steps after the measured ones: where the GPU time of one set-up goes
        (the tokens/s are measured before the profiler starts)."""

        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == warmup + steps:
                self.profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA])
                self.profiler.__enter__()

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == warmup + steps + 2:
                torch.cuda.synchronize()
                self.profiler.__exit__(None, None, None)
                table = self.profiler.key_averages().table(sort_by="self_device_time_total", row_limit=25,
                                                           max_name_column_width=70)
                with open(profile, "w") as handle:
                    handle.write(table)

    clock = Clock()
    callbacks = [clock, Profile()] if profile else [clock]
    if spec["trainer"] == "transformers":
        from peft import get_peft_model, prepare_model_for_kbit_training
        from transformers import DataCollatorForLanguageModeling

        model = get_peft_model(prepare_model_for_kbit_training(model, use_gradient_checkpointing=True), lora)
        dataset = Dataset.from_dict({"input_ids": ids})
        args = TrainingArguments(**common, include_num_input_tokens_seen="non_padding")
        collator = DataCollatorForLanguageModeling(tokenizer=_PadOnly(), mlm=False)
        trainer = Trainer(model=model, args=args, train_dataset=dataset, data_collator=collator, callbacks=callbacks)
    else:
        masks = [[0] * p + [1] * c for p, c in lengths]
        dataset = Dataset.from_dict({"input_ids": ids, "completion_mask": masks})
        model.generation_config.pad_token_id = PAD_ID
        args = SFTConfig(**common, completion_only_loss=True, padding_free=spec["padding_free"], max_length=None,
                         include_num_input_tokens_seen="non_padding", pad_token=None,
                         use_liger_kernel=spec.get("liger", False), fused_lora=spec.get("fused", False),
                         compile_layers=spec.get("compile", False),
                         activation_offloading=spec.get("offload", False))
        trainer = QLoRASFTTrainer(model=model, args=args, train_dataset=dataset, peft_config=lora,
                                  processing_class=_tokenizer_stub(), callbacks=callbacks)
    torch.cuda.reset_peak_memory_stats()
    trainer.train()
    seconds = clock.end - clock.start
    tokens = clock.tokens_at_end - clock.tokens_at_start
    return {
        "setup": name, "description": SETUPS[name][0], **{k: v for k, v in spec.items() if k != "targets"},
        "targets": spec["targets"], "steps": steps, "warmup_steps": warmup, "seconds": round(seconds, 2),
        "real_tokens": int(tokens), "tokens_per_second": round(tokens / seconds, 1),
        "peak_allocated_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
        "peak_reserved_gib": round(torch.cuda.max_memory_reserved() / 2**30, 2),
        "fused_projections": sum(hasattr(module, "_peft_forward") for module in trainer.model.modules()),
    }


def generation_speed(model_dir: str, lengths: list[tuple[int, int]], dialogues: int, method: str,
                     batches: list[int]) -> list[dict]:
    """Evaluation speed of the 3B shape by one decoding method (dialogsum_sft.decoding) at each batch size: bf16
    weights (an adapter merged, as scripts/evaluate.py runs it). Random weights never emit a stop token, so every
    summary runs to the median real summary length instead. Two passes over the same prompts per batch size: the
    first includes the warm-up (CUDA kernels, torch.compile, CUDA graphs), the second is the steady speed."""
    import statistics

    import torch
    from transformers import AutoModelForCausalLM

    from dialogsum_sft.decoding import DECODING_METHODS, decode

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16, device_map={"": 0}).eval()
    new_tokens = int(statistics.median(completion for _, completion in lengths))
    generator = torch.Generator().manual_seed(0)
    prompts = [torch.randint(1000, 128000, (prompt,), generator=generator).tolist()
               for prompt, _ in lengths[:dialogues]]
    rows = []
    for batch in batches:
        torch.cuda.reset_peak_memory_stats()
        seconds = []
        for _ in range(2):
            torch.cuda.synchronize()
            start = time.perf_counter()
            decoded = decode(model, prompts, stop_ids=[], pad_id=PAD_ID, max_new_tokens=new_tokens,
                             batch_size=batch, method=method)
            torch.cuda.synchronize()
            seconds.append(time.perf_counter() - start)
            assert all(len(d.tokens) == new_tokens for d in decoded), "a summary did not run to max_new_tokens"
        rows.append({"setup": f"generation-{method}-b{batch}", "description": f"greedy generation, bf16 merged "
                     f"weights, {DECODING_METHODS[method]}, batches of {batch}, {new_tokens} new tokens per "
                     "dialogue (the median DialogSum summary)", "method": method, "dialogues": len(prompts),
                     "new_tokens": new_tokens, "batch": batch, "seconds": round(seconds[1], 2),
                     "dialogues_per_second": round(len(prompts) / seconds[1], 2),
                     "seconds_first_pass": round(seconds[0], 2),
                     "dialogues_per_second_first_pass": round(len(prompts) / seconds[0], 2),
                     "warmup_seconds": round(seconds[0] - seconds[1], 2),
                     "peak_allocated_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)})
        print("RESULT " + json.dumps(rows[-1]), flush=True)
    return rows


class _PadOnly:
    """The little of a tokenizer transformers' LM collator needs for the seed set-up (pads with the reserved id)."""

    pad_token_id = PAD_ID
    padding_side = "right"

    def pad(self, features, return_tensors="pt", **kwargs):
        import torch

        longest = max(len(f["input_ids"]) for f in features)
        input_ids = [f["input_ids"] + [PAD_ID] * (longest - len(f["input_ids"])) for f in features]
        mask = [[1] * len(f["input_ids"]) + [0] * (longest - len(f["input_ids"])) for f in features]
        return {"input_ids": torch.tensor(input_ids), "attention_mask": torch.tensor(mask)}


def _tokenizer_stub():
    """A real tokenizer object (SFTTrainer checks its type) whose pad id is Llama 3's reserved pad token."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = {f"<t{i}>": i for i in range(PAD_ID + 1)}
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="<t0>")))
    tokenizer.pad_token, tokenizer.eos_token = f"<t{PAD_ID}>", "<t128009>"
    return tokenizer


def main(argv=None):
    parser = ArgumentParser(__doc__)
    parser.add_argument("--setups", nargs="*", default=list(SETUPS), choices=list(SETUPS),
                        help="training set-ups (none: `--setups` alone, e.g. to measure generation only)")
    parser.add_argument("--steps", type=int, default=10, help="measured optimizer steps per set-up")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rows", type=int, default=2048, help="DialogSum training rows whose lengths are used")
    parser.add_argument("--data", default=os.environ.get("DIALOGSUM_DIR", "../shared/data/dialogsum"))
    parser.add_argument("--tokenizer", default=".cache/SmolLM2-135M-Instruct",
                        help="tokenizer for the lengths (Llama 3's is gated; SmolLM2's counts are within ~10%%)")
    parser.add_argument("--model_dir", default="/tmp/llama-3.2-3b-random")
    parser.add_argument("--generation_dialogues", type=int, default=512,
                        help="dialogues for the generation-speed measurement (0: skip it)")
    parser.add_argument("--generation_methods", nargs="+", default=[("dynamic", 64)], type=method_and_batch,
                        help="METHOD:BATCH runs of the generation speed (methods: %s; batch: rows per generate "
                        "call, or for continuous the most sequences decoded together), each method in its own "
                        "process" % ", ".join(DECODING_METHODS))
    parser.add_argument("--generation_batches", nargs="+", type=int, help=argparse.SUPPRESS)  # internal, with --one
    parser.add_argument("--profile", help="internal: profile file of the set-up run with --one")
    parser.add_argument("--profile_setup", help="write a torch.profiler table of this set-up (2 extra steps after the "
                        "measured ones) next to --output")
    parser.add_argument("--time_budget", type=float, default=None,
                        help="seconds: start no set-up after this, and stop a running one when it is spent (the "
                        "results so far are in --output after every set-up)")
    parser.add_argument("--output", required=True)
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one set-up in this process
    args = parser.parse_args(argv)

    lengths_file = os.path.join(args.model_dir, "lengths.json")
    if args.one:
        with open(lengths_file) as handle:
            lengths = json.load(handle)
        if args.one.startswith(GENERATION):  # prints a result line per batch size, as each finishes
            generation_speed(args.model_dir, lengths, args.generation_dialogues, args.one[len(GENERATION):],
                             args.generation_batches)
        else:
            result = run_setup(args.one, args.model_dir, lengths, args.steps, args.warmup, args.profile)
            print("RESULT " + json.dumps(result), flush=True)
        return

    started = time.perf_counter()
    build_model_dir(args.model_dir)
    with open(lengths_file, "w") as handle:
        json.dump(dialogsum_lengths(args.data, args.tokenizer, args.rows), handle)
    results = []
    batches = {}  # method: its batch sizes, in the order given
    for method, batch in args.generation_methods:
        batches.setdefault(method, []).append(batch)
    generation = [GENERATION + method for method in batches] if args.generation_dialogues else []
    for name in args.setups + generation:
        command = [sys.executable, __file__, "--one", name, "--steps", str(args.steps), "--warmup", str(args.warmup),
                   "--generation_dialogues", str(args.generation_dialogues), "--model_dir", args.model_dir,
                   "--output", args.output]
        if name in generation:
            command += ["--generation_batches", *map(str, batches[name[len(GENERATION):]])]
        if name == args.profile_setup:
            command += ["--profile", os.path.splitext(args.output)[0] + f"-profile-{name}.txt"]
        left = None if args.time_budget is None else args.time_budget - (time.perf_counter() - started)
        if left is not None and left < 20:
            print(f"skipped {name}: time budget spent", flush=True)
            continue
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=left)
            stdout, stderr, failed = done.stdout, done.stderr, done.returncode != 0
        except subprocess.TimeoutExpired as err:
            stdout = err.stdout.decode() if isinstance(err.stdout, bytes) else err.stdout or ""
            stderr, failed = f"error: stopped at the time budget ({args.time_budget} s)\n{err.stderr or ''}", True
        rows = [json.loads(line[len("RESULT "):]) for line in stdout.splitlines() if line.startswith("RESULT ")]
        # A generation process reports each batch size as it finishes: keep those, and say where it stopped.
        if not rows or (failed and name.startswith(GENERATION)):
            lines = [line for line in stderr.splitlines() if "Error" in line or "error" in line]
            error = (lines or stderr.strip().splitlines() or ["no output"])[-1]
            description = SETUPS[name][0] if name in SETUPS else "greedy generation"
            rows.append({"setup": name, "description": description, "error": error[:500]})
        results += rows
        add_peer_ratios(results)
        for row in rows:
            print(json.dumps(row), flush=True)
        with open(args.output, "w") as handle:
            json.dump({"model": "Llama-3.2-3B shape, random weights, 4-bit NF4", **run_info(), "results": results},
                      handle, indent=2)
    print(f"{'setup':30} {'tokens/s':>10} {'peak GiB':>9} {'x TRL+Liger b64':>16}")
    for row in results:
        speed = row.get("tokens_per_second", row.get("dialogues_per_second", "error"))
        print(f"{row['setup']:30} {speed:>10} {row.get('peak_allocated_gib', ''):>9} "
              f"{row.get('ratio_to_trl_liger', ''):>16}")


def add_peer_ratios(results: list[dict]) -> None:
    """Each result's tokens/s as a multiple of each peer's in the same run (peers that ran and did not fail)."""
    speeds = {row["setup"]: row["tokens_per_second"] for row in results if "tokens_per_second" in row}
    for row in results:
        for key, peer in PEERS.items():
            if peer in speeds and row["setup"] in speeds:
                row[key] = round(speeds[row["setup"]] / speeds[peer], 3)


if __name__ == "__main__":
    run_cli(main)
