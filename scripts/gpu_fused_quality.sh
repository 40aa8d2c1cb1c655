#!/usr/bin/env bash
# Does the fused QLoRA path change what the model learns (issue 11)? SmolLM2 trained twice with
# recipes/smollm2-135m-gpu.yaml, side by side on one GPU, identical but for --fused_lora true / false (same seed,
# same data order; the final weights, no checkpoint picked by ROUGE), then each scored on the full test split
# (fine-tuned only, dynamic decoding). About 4 minutes on an H200.
#   bash scripts/gpu_fused_quality.sh DIALOGSUM_DIR RESULTS_DIR
# RESULTS_DIR gets fused-{true,false}-trainer_state.json and -eval_results.json (the loss curves and the ROUGE);
# the runs stay in outputs/smollm2-fused-{true,false}.
set -euo pipefail
data=${1:?DialogSum directory}
results=${2:?results directory}
mkdir -p "$results" outputs
python scripts/prepare_embedded_model.py >/dev/null
start=$(date +%s)
for fused in true false; do
  (
    run=outputs/smollm2-fused-$fused
    rm -rf "$run"
    python scripts/sft.py recipes/smollm2-135m-gpu.yaml --dataset_name "$data" --report_to none --output_dir "$run" \
      --fused_lora "$fused" --eval_strategy no --load_best_model_at_end false --rouge_eval_samples 0 \
      --metric_for_best_model loss --save_strategy no >"$run.train.log" 2>&1 || { tail -20 "$run.train.log"; exit 1; }
    python scripts/evaluate.py "$run" --dataset "$data" --split test --no_base --batch_size 128 \
      --output_dir "$run/eval-test" >"$run.eval.log" 2>&1 || { tail -20 "$run.eval.log"; exit 1; }
    cp "$run/trainer_state.json" "$results/fused-$fused-trainer_state.json"
    cp "$run/eval-test/eval_results.json" "$results/fused-$fused-eval_results.json"
  ) &
done
wait
echo "both trained and scored in $(( $(date +%s) - start )) s"
python - "$results" <<'EOF'
import json, sys

folder = sys.argv[1]
for fused in ("true", "false"):
    metrics = json.load(open(f"{folder}/fused-{fused}-eval_results.json"))["tuned"]["mean_over_references"]
    losses = [entry["loss"] for entry in json.load(open(f"{folder}/fused-{fused}-trainer_state.json"))["log_history"]
              if "loss" in entry]
    print(f"fused_lora {fused:5}: test ROUGE {metrics['rouge1']:.2f} / {metrics['rouge2']:.2f} / {metrics['rougeL']:.2f},"
          f" train loss first {losses[0]:.4f} last {losses[-1]:.4f}")
EOF
