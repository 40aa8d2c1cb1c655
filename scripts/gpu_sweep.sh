#!/usr/bin/env bash
# The validation sweep behind recipes/smollm2-135m-gpu.yaml (docs/benchmarks.md): each variant trains the recipe with
# its overrides, all side by side on one GPU, and is scored on the validation split (never the test split) with the
# fine-tuned weights built both ways (--weights nf4-merged and merged).
#   bash scripts/gpu_sweep.sh DIALOGSUM_DIR RESULTS_DIR "lr1e-3: --learning_rate 1e-3" "r64: --lora_r 64" ...
set -euo pipefail
data=${1:?DialogSum directory}
results=${2:?results directory}
shift 2
mkdir -p "$results"
python scripts/prepare_embedded_model.py
for variant in "$@"; do
  name=${variant%%:*}
  read -r -a overrides <<<"${variant#*:}"
  (
    run=outputs/sweep-$name
    python scripts/sft.py recipes/smollm2-135m-gpu.yaml --dataset_name "$data" --report_to none --output_dir "$run" \
      "${overrides[@]}" >"$results/$name-train.log" 2>&1
    cp "$run/run_results.json" "$results/$name-run_results.json"
    for weights in nf4-merged merged; do
      python scripts/evaluate.py "$run" --dataset "$data" --split validation --no_base --batch_size 128 \
        --weights "$weights" --output_dir "$run/eval-$weights" >"$results/$name-eval-$weights.log" 2>&1
      cp "$run/eval-$weights/eval_results.json" "$results/$name-$weights.json"
    done
  ) &
done
wait
