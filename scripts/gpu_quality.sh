#!/usr/bin/env bash
# The quality run on one GPU (docs/benchmarks.md): SmolLM2-135M on the full DialogSum training split.
# Three settings train side by side (a 135M model leaves the GPU mostly idle), each is scored on the validation
# split, and only the best by validation ROUGE-L is scored on the test split, against the zero-shot base.
#   bash scripts/gpu_quality.sh DIALOGSUM_DIR RESULTS_DIR
set -euo pipefail
data=${1:?DialogSum directory}
results=${2:?results directory}
mkdir -p "$results"
python scripts/prepare_embedded_model.py
common=(recipes/smollm2-135m-gpu.yaml --dataset_name "$data" --report_to none --eval_strategy no --save_strategy no)
declare -A settings=(
  [r16-lr2e-4-ep2]="--lora_r 16 --lora_alpha 32 --learning_rate 2e-4 --num_train_epochs 2"
  [r64-lr2e-4-ep3]="--lora_r 64 --lora_alpha 128 --learning_rate 2e-4 --num_train_epochs 3"
  [r16-lr5e-4-ep3]="--lora_r 16 --lora_alpha 32 --learning_rate 5e-4 --num_train_epochs 3"
)
start=$(date +%s)
for name in "${!settings[@]}"; do
  # shellcheck disable=SC2086
  python scripts/sft.py "${common[@]}" ${settings[$name]} --output_dir "outputs/$name" >"$results/train-$name.log" 2>&1 &
done
wait
echo "trained in $(( $(date +%s) - start )) s"
for name in "${!settings[@]}"; do
  python scripts/evaluate.py "outputs/$name" --dataset "$data" --split validation --no_base --batch_size 128 \
    --output_dir "outputs/$name/eval-validation" >"$results/eval-validation-$name.log" 2>&1 &
done
wait
best=$(python - "${!settings[@]}" <<'PY'
import json, sys
scores = {n: json.load(open(f"outputs/{n}/eval-validation/eval_results.json"))["tuned"]["mean_over_references"]
          for n in sys.argv[1:]}
for n, s in sorted(scores.items()):
    print(n, s, file=sys.stderr)
print(max(scores, key=lambda n: scores[n]["rougeL"]))
PY
)
echo "best on validation: $best"
python scripts/evaluate.py "outputs/$best" --dataset "$data" --split test --batch_size 128 \
  --output_dir "outputs/$best/eval-test" 2>&1 | tail -20
for name in "${!settings[@]}"; do
  cp "outputs/$name/eval-validation/eval_results.json" "$results/validation-$name.json"
  cp "outputs/$name/train_results.json" "$results/train-$name.json"
done
cp "outputs/$best/eval-test/eval_results.json" "$results/test-$best.json"
cp "outputs/$best/eval-test/predictions.jsonl" "$results/test-predictions-$best.jsonl"
cp "outputs/$best/trainer_state.json" "$results/trainer_state-$best.json"
