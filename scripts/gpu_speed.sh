#!/usr/bin/env bash
# The speed run on one GPU (issue 11, docs/benchmarks.md): the fused-path and packing tests on CUDA, then the
# benchmark set-ups most important first within a time budget (the JSON is rewritten after each), then a profiler
# table of the fused + Liger fast setting if time is left.
#   bash scripts/gpu_speed.sh DIALOGSUM_DIR RESULTS_DIR [TOTAL_SECONDS]
set -uo pipefail
data=${1:?DialogSum directory}
results=${2:?results directory}
total=${3:-510}
start=$(date +%s)
left() { echo $(( total - ($(date +%s) - start) )); }
mkdir -p "$results"
python scripts/prepare_embedded_model.py >"$results/prepare.log" 2>&1  # SmolLM2's tokenizer counts the lengths
timeout 150 python -m pytest tests/test_fused_lora.py tests/test_packing.py -q -rs >"$results/pytest.log" 2>&1
echo "pytest exit $? after $(( $(date +%s) - start )) s: $(tail -1 "$results/pytest.log")"
setups=(trl-liger-b64 ours-fast-fused-liger ours-fast-fused ours-fast-b64 lean-fused-liger-b32 ours-fast-liger
        lean-fused-liger-offload-b16 lean-fused-liger-b64 trl-padded-liger ours-fast-fused-liger-compile trl-padded
        ours-lean-b16)
python scripts/benchmark.py --steps 6 --warmup 2 --generation_dialogues 0 --data "$data" \
  --time_budget $(( $(left) - 75 )) --setups "${setups[@]}" --output "$results/benchmark-3b-fused.json" \
  2>&1 | grep -v Warning | tail -40
if (( $(left) > 70 )); then
  timeout $(( $(left) - 5 )) python scripts/benchmark.py --steps 4 --warmup 2 --generation_dialogues 0 --data "$data" \
    --setups ours-fast-fused-liger --profile_setup ours-fast-fused-liger --output "$results/benchmark-3b-fused-profile.json" \
    2>&1 | tail -3
fi
echo "done in $(( $(date +%s) - start )) s"
