#!/usr/bin/env bash
# Fast decoding (issue 14) on one GPU, 5-6 minutes: (1) SmolLM2-135M's zero-shot summaries of the 500 unique test
# dialogues by today's path (generate, batches of 64) and by each faster method, timed and compared (identical
# summaries, ROUGE difference); (2) the generation speed of the Llama-3.2-3B shape (random weights, 512 dialogues,
# 34 forced new tokens) by each method. Every run is timed twice: first pass (warm-up and compilation included),
# then the steady speed. Results: decoding-smollm2.json, decoding-3b.json and their logs.
#   bash scripts/gpu_decoding.sh DIALOGSUM_DIR RESULTS_DIR
set -uo pipefail
data=${1:?DialogSum directory}
results=${2:?results directory}
mkdir -p "$results"
start=$(date +%s)
python scripts/prepare_embedded_model.py >"$results/prepare.log" 2>&1 || { tail -n 5 "$results/prepare.log"; exit 1; }

timeout 220 python scripts/compare_decoding.py --data "$data" --output "$results/decoding-smollm2.json" \
  --runs dynamic:64 continuous:512 static:128 dynamic:512 >"$results/decoding-smollm2.log" 2>&1 \
  || tail -n 15 "$results/decoding-smollm2.log"
echo "SmolLM2 comparison done at $(( $(date +%s) - start )) s"

# Most telling first; the time budget stops what would overrun (the JSON keeps what finished).
budget=$(( 300 - ($(date +%s) - start) )); [ "$budget" -lt 180 ] && budget=180
python scripts/benchmark.py --setups --data "$data" --time_budget "$budget" \
  --generation_methods continuous:512 static:256 dynamic:64 dynamic:256 continuous:256 \
  --output "$results/decoding-3b.json" >"$results/decoding-3b.log" 2>&1 || tail -n 15 "$results/decoding-3b.log"
echo "3B shape done at $(( $(date +%s) - start )) s"

python - "$results" <<'PY'
import json, sys
folder = sys.argv[1]
print(f"{'3B shape run':28} {'dlg/s':>7} {'dlg/s 1st':>9} {'warm-up s':>9} {'peak GiB':>8}")
try:
    rows = json.load(open(f"{folder}/decoding-3b.json"))["results"]
except (OSError, ValueError):
    rows = []
for row in rows:
    if "error" in row:
        print(f"{row['setup']:28} error: {row['error'][:90]}")
    else:
        print(f"{row['setup']:28} {row['dialogues_per_second']:>7} {row['dialogues_per_second_first_pass']:>9} "
              f"{row['warmup_seconds']:>9} {row['peak_allocated_gib']:>8}")
PY
echo "SmolLM2, 500 test dialogues (same: summaries identical to dynamic:64; dR: ROUGE minus dynamic:64's)"
tail -n 5 "$results/decoding-smollm2.log"
