#!/usr/bin/env bash
# One process on one GPU through each multi-GPU accelerate config (no multi-GPU machine has been lent): each trains
# SmolLM2 (recipes/smollm2-135m-gpu.yaml, 60 steps, a checkpoint at step 30), saves, has its saved adapter compared
# with the adapter the rank held in memory, and is scored on the first 100 validation dialogues.
#   bash scripts/gpu_distributed.sh DIALOGSUM_DIR RESULTS_DIR [CONFIG ...]    (default: ddp fsdp_qlora zero2 zero3)
# FSDP and ZeRO-3 train on PEFT's LoRA path (--fused_lora false), DDP and ZeRO-2 on the recipe's fused path.
# Writes RESULTS_DIR/summary.json and summary.md (tokens/s, peak memory, adapter check, ROUGE per config) and the
# last lines of each failed step's log. About 1-1.5 min per config on an H100/H200.
set -uo pipefail
data=${1:?DialogSum directory}
results=${2:?results directory}
shift 2
configs=${*:-ddp fsdp_qlora zero2 zero3}
mkdir -p "$results"
python scripts/prepare_embedded_model.py >/dev/null || exit 1
probes=$(mktemp -d)

# scripts/sft.py unchanged, with the trainer's final save_model also writing the adapter the rank holds in memory
# (gathered from FSDP's flat parameters or ZeRO-3's partitions) and the peak GPU memory.
cat >"$probes/probe.py" <<'EOF'
import json, os, runpy, sys

import torch
import trl
from safetensors.torch import save_file


def rank_adapter(trainer):
    def lora(named):
        return {name: param.detach().float().cpu().clone() for name, param in named if "lora_" in name}
    if trainer.is_fsdp_enabled:
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
        with FSDP.summon_full_params(trainer.model, writeback=False):
            return lora(trainer.model.named_parameters())  # names without FSDP's wrappers here
    named = list(trainer.accelerator.unwrap_model(trainer.model).named_parameters())
    partitioned = [param for name, param in named if "lora_" in name and hasattr(param, "ds_id")]  # ZeRO-3
    if partitioned:
        import deepspeed
        with deepspeed.zero.GatheredParameters(partitioned):
            return lora(named)
    return lora(named)


class ProbedSFTTrainer(trl.SFTTrainer):
    def save_model(self, output_dir=None, _internal_call=False):
        if not _internal_call:
            adapter = rank_adapter(self)
            if self.is_world_process_zero():
                probe = os.environ["PROBE_DIR"]
                adapter = {name.replace(".default.", "."): tensor for name, tensor in adapter.items()}
                save_file(adapter, f"{probe}/rank0.safetensors")
                with open(f"{probe}/memory.json", "w") as handle:
                    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
                    json.dump({"peak_gpu_memory_gb": peak,
                               "distributed_type": str(self.accelerator.distributed_type)}, handle)
        super().save_model(output_dir, _internal_call)


trl.SFTTrainer = ProbedSFTTrainer
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
EOF

for config in $configs; do
  run=outputs/gpu-distributed-$config
  probe=$probes/$config
  rm -rf "$run" && mkdir -p "$probe"
  engine_args=()  # FSDP and ZeRO-3 shard the LoRA weights the fused path reads: the recipe check asks for PEFT's path
  case $config in fsdp*|zero3*) engine_args=(--fused_lora false) ;; esac
  start=$(date +%s)
  PROBE_DIR=$probe python -m accelerate.commands.launch --config_file "accelerate_configs/$config.yaml" --num_processes 1 \
    "$probes/probe.py" scripts/sft.py recipes/smollm2-135m-gpu.yaml --dataset_name "$data" --report_to none \
    --max_steps 60 --eval_strategy no --load_best_model_at_end false --rouge_eval_samples 0 --metric_for_best_model loss --save_steps 30 --output_dir "$run" "${engine_args[@]}" \
    >"$probe/train.log" 2>&1
  echo "$config: train exit $? after $(( $(date +%s) - start )) s"
  if [ -f "$run/run_results.json" ]; then
    python scripts/evaluate.py "$run" --dataset "$data" --split validation --no_base --max_samples 100 \
      --batch_size 100 --output_dir "$run/eval" >"$probe/eval.log" 2>&1
    echo "$config: eval exit $? after $(( $(date +%s) - start )) s"
  fi
  for step in train eval; do
    if [ -f "$probe/$step.log" ] && ! { [ "$step" = train ] && [ -f "$run/run_results.json" ]; } &&
       ! { [ "$step" = eval ] && [ -f "$run/eval/eval_results.json" ]; }; then
      grep -v -i -E "warn|it/s\]|s/it\]" "$probe/$step.log" | tail -40 >"$results/$config-$step.log.tail"
    fi
  done
done

python - "$results" "$probes" $configs <<'EOF'
import json, os, sys

import torch
from safetensors.torch import load_file

results, probes, configs = sys.argv[1], sys.argv[2], sys.argv[3:]
rows = {}
for config in configs:
    run, probe = f"outputs/gpu-distributed-{config}", os.path.join(probes, config)
    row = rows[config] = {"trained": os.path.isfile(f"{run}/run_results.json")}
    if not row["trained"]:
        continue
    metrics = json.load(open(f"{run}/run_results.json"))["metrics"]
    row["train_runtime_s"] = metrics["train_runtime"]
    row["tokens_per_s"] = metrics["num_tokens"] / metrics["train_runtime"] if "num_tokens" in metrics else None
    row.update(json.load(open(f"{probe}/memory.json")))
    saved = {name: tensor.float() for name, tensor in load_file(f"{run}/adapter_model.safetensors").items()}
    held = load_file(f"{probe}/rank0.safetensors")
    row["adapter_tensors"] = len(saved)
    row["adapter_equals_rank"] = saved.keys() == held.keys() and all(torch.equal(saved[k], held[k]) for k in held)
    row["adapter_max_abs_diff"] = max((float((saved[k] - held[k]).abs().max()) for k in held if k in saved), default=None)
    checkpoint = f"{run}/checkpoint-30/adapter_model.safetensors"
    row["checkpoint_30_tensors"] = len(load_file(checkpoint)) if os.path.isfile(checkpoint) else 0
    if os.path.isfile(f"{run}/eval/eval_results.json"):
        row["validation_100"] = json.load(open(f"{run}/eval/eval_results.json"))["tuned"]["mean_over_references"]
with open(os.path.join(results, "summary.json"), "w") as handle:
    json.dump(rows, handle, indent=2)
lines = ["| config | trained | tokens/s | peak GPU GB | adapter tensors (ckpt-30) | saved == rank | ROUGE-1/2/L |",
         "| --- | --- | --- | --- | --- | --- | --- |"]
for config, row in rows.items():
    rouge = row.get("validation_100")
    lines.append("| {} | {} | {} | {} | {} ({}) | {} | {} |".format(
        config, row["trained"], f"{row['tokens_per_s']:.0f}" if row.get("tokens_per_s") else "-",
        f"{row['peak_gpu_memory_gb']:.2f}" if row.get("peak_gpu_memory_gb") else "-",
        row.get("adapter_tensors", "-"), row.get("checkpoint_30_tensors", "-"), row.get("adapter_equals_rank", "-"),
        " / ".join(f"{rouge[k]:.2f}" for k in ("rouge1", "rouge2", "rougeL")) if rouge else "-"))
open(os.path.join(results, "summary.md"), "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
EOF
