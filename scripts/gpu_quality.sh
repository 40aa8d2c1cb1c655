#!/usr/bin/env bash
# The quality run on one GPU (docs/benchmarks.md): SmolLM2-135M trained with recipes/smollm2-135m-gpu.yaml on the
# full DialogSum training split, then scored on the validation split (tuned only) and on the test split (tuned
# against the separately loaded zero-shot base).
#   bash scripts/gpu_quality.sh DIALOGSUM_DIR RESULTS_DIR
set -euo pipefail
data=${1:?DialogSum directory}
results=${2:?results directory}
run=outputs/smollm2-135m-gpu
mkdir -p "$results"
python scripts/prepare_embedded_model.py
start=$(date +%s)
python scripts/sft.py recipes/smollm2-135m-gpu.yaml --dataset_name "$data" --report_to none --output_dir "$run" \
  >"$results/train.log" 2>&1
echo "trained in $(( $(date +%s) - start )) s"
python scripts/evaluate.py "$run" --dataset "$data" --split validation --no_base --batch_size 128 \
  --output_dir "$run/eval-validation" >"$results/eval-validation.log" 2>&1
python scripts/evaluate.py "$run" --dataset "$data" --split test --batch_size 128 \
  --output_dir "$run/eval-test" >"$results/eval-test.log" 2>&1
echo "train + evaluation in $(( $(date +%s) - start )) s"
cp "$run/run_results.json" "$run/trainer_state.json" "$results/"
cp "$run/eval-validation/eval_results.json" "$results/validation_eval_results.json"
cp "$run/eval-test/eval_results.json" "$run/eval-test/predictions.jsonl" "$run/eval-test/eval_results.md" "$results/"
