#!/usr/bin/env bash
# Qwen2.5-Coder-1.5B-Instruct on one GPU (issue 12): the checkpoint built from the joined Q4_K_M GGUF (checked against
# the registry's size and sha256), one epoch of recipes/qwen2.5-coder-1.5b.yaml on the full DialogSum training split,
# then zero-shot and fine-tuned ROUGE on the full test split. Extra arguments go to scripts/sft.py.
#   bash scripts/gpu_qwen.sh GGUF DIALOGSUM_DIR RESULTS_DIR [--learning_rate 2e-4 ...]
# With --validation first, it instead trains two learning rates side by side (each the full epoch) and scores them
# on the first 300 validation dialogues, fine-tuned only; the test split is not touched:
#   bash scripts/gpu_qwen.sh --validation GGUF DIALOGSUM_DIR RESULTS_DIR [sft.py overrides for both]
set -Eeuo pipefail
validation=false
if [ "${1:-}" = --validation ]; then validation=true; shift; fi
gguf=${1:?joined GGUF}
data=${2:?DialogSum directory}
results=${3:?results directory}
shift 3
recipe=recipes/qwen2.5-coder-1.5b.yaml
mkdir -p "$results"
exec 3>&1  # the terminal, for the failure report: a step that fails may have its output redirected to a log
trap 'echo "failed; the logs end with:" >&3; tail -n 15 "$results"/*.log outputs/qwen-lr*-eval.log >&3 2>/dev/null' ERR
start=$(date +%s)
python scripts/prepare_embedded_model.py --model qwen2.5-coder-1.5b --gguf "$gguf" >"$results/prepare.log" 2>&1
echo "checkpoint ready in $(( $(date +%s) - start )) s"

train() {  # run-dir, sft.py overrides...
  local run=$1
  shift
  python scripts/sft.py "$recipe" --dataset_name "$data" --report_to none --save_strategy no --output_dir "$run" "$@"
}
evaluate() {  # run-dir, evaluate.py arguments...
  local run=$1
  shift
  python scripts/evaluate.py "$run" --dataset "$data" --batch_size 128 --max_new_tokens 128 "$@"
}
train_runtime() {
  python -c "import json, sys; print(round(json.load(open(sys.argv[1]))['metrics']['train_runtime']))" "$1"
}

if $validation; then
  for lr in 2e-4 5e-4; do  # 7 files come back: the device returns at most 8
    (
      rm -rf "outputs/qwen-lr$lr"
      train "outputs/qwen-lr$lr" --learning_rate "$lr" "$@" >"$results/lr$lr-train.log" 2>&1
      evaluate "outputs/qwen-lr$lr" --split validation --max_samples 300 --no_base \
        --output_dir "outputs/qwen-lr$lr/eval-validation" >"outputs/qwen-lr$lr-eval.log" 2>&1
      cp "outputs/qwen-lr$lr/run_results.json" "$results/lr$lr-train_results.json"
      cp "outputs/qwen-lr$lr/eval-validation/eval_results.json" "$results/lr$lr-validation.json"
    ) &
  done
  wait
  echo "two runs side by side, trained and scored in $(( $(date +%s) - start )) s"
  for lr in 2e-4 5e-4; do
    echo "lr $lr: trained in $(train_runtime "$results/lr$lr-train_results.json") s; validation (300 dialogues):"
    python -c "import json, sys; print(json.load(open(sys.argv[1]))['tuned']['mean_over_references'])" \
      "$results/lr$lr-validation.json"
  done
  exit 0
fi

run=outputs/qwen2.5-coder-1.5b-gpu  # 8 files come back: the device returns at most 8
rm -rf "$run"
step=$(date +%s)
train "$run" "$@" >"$results/train.log" 2>&1
echo "trained in $(( $(date +%s) - step )) s wall (train_runtime $(train_runtime "$run/run_results.json") s)"
step=$(date +%s)
evaluate "$run" --split test --output_dir "$run/eval-test" >"$results/eval.log" 2>&1
echo "zero-shot + fine-tuned test evaluation in $(( $(date +%s) - step )) s"
grep -E "dialogues in" "$results/eval.log" || true
echo "total $(( $(date +%s) - start )) s"
cat "$run/eval-test/eval_results.md"
cp "$run/run_results.json" "$run/trainer_state.json" "$results/"
cp "$run/eval-test/eval_results.json" "$run/eval-test/eval_results.md" "$run/eval-test/predictions.jsonl" "$results/"
