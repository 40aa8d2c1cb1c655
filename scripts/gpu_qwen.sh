#!/usr/bin/env bash
# Qwen2.5-Coder-1.5B-Instruct on one GPU (issue 12): the checkpoint built from the joined Q4_K_M GGUF (checked against
# the registry's size and sha256), one epoch of recipes/qwen2.5-coder-1.5b.yaml on the full DialogSum training split,
# then zero-shot and fine-tuned ROUGE on the full test split. Extra arguments go to scripts/sft.py.
#   bash scripts/gpu_qwen.sh GGUF DIALOGSUM_DIR RESULTS_DIR [--learning_rate 2e-4 ...]
# With --validation first, it instead trains each variant ("name: sft.py overrides") side by side and scores them on
# the first 300 validation dialogues, fine-tuned only, and writes validation.json with the best by the sum of
# ROUGE-1/2/L; the test split is not touched:
#   bash scripts/gpu_qwen.sh --validation GGUF DIALOGSUM_DIR RESULTS_DIR "lr5e-4: --learning_rate 5e-4" ...
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
trap 'echo "failed; the logs end with:" >&3; tail -n 15 "$results"/*.log outputs/qwen-*-eval.log >&3 2>/dev/null' ERR
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

if $validation; then  # the variants side by side, each the full recipe with its overrides
  for variant in "$@"; do
    name=${variant%%:*}
    read -r -a overrides <<<"${variant#*:}"
    (
      run=outputs/qwen-$name
      rm -rf "$run"
      train "$run" "${overrides[@]}" >"$results/$name-train.log" 2>&1
      evaluate "$run" --split validation --max_samples 300 --no_base --output_dir "$run/eval-validation" \
        >"$run-eval.log" 2>&1
      cp "$run/run_results.json" "$results/$name-run_results.json"
      cp "$run/eval-validation/eval_results.json" "$results/$name-validation.json"
    ) &
  done
  wait
  echo "$# runs side by side, trained and scored in $(( $(date +%s) - start )) s"
  python - "$results" "$@" <<'EOF'
import json, sys

folder, variants = sys.argv[1], sys.argv[2:]
rows = {}
for variant in variants:
    name, overrides = variant.split(":", 1)
    try:
        open(f"{folder}/{name}-validation.json").close()
    except OSError:
        print(f"{name:14} failed (see {name}-train.log)")
        continue
    rouge = json.load(open(f"{folder}/{name}-validation.json"))["tuned"]["mean_over_references"]
    runtime = json.load(open(f"{folder}/{name}-run_results.json"))["metrics"]["train_runtime"]
    rows[name] = {"overrides": overrides.split(), "validation_300": rouge, "train_runtime_s_shared_gpu": runtime}
    print(f"{name:14} {overrides:44} R1 {rouge['rouge1']:.2f} R2 {rouge['rouge2']:.2f} RL {rouge['rougeL']:.2f}")
best = max(rows, key=lambda name: sum(rows[name]["validation_300"][key] for key in ("rouge1", "rouge2", "rougeL")))
json.dump({"variants": rows, "best": best}, open(f"{folder}/validation.json", "w"), indent=2)
print("best on validation (sum of ROUGE-1/2/L):", best)
EOF
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
