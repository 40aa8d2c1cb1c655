#!/usr/bin/env bash
# The speed run on one GPU (issue 11, docs/benchmarks.md): the CUDA cases of the fused-path tests and the packing
# tests, then the benchmark set-ups most important first within a time budget (the JSON is rewritten after each
# set-up, so a run cut short keeps what finished), with a profiler table of two extra steps of the fused + Liger
# fast setting.
#   bash scripts/gpu_speed.sh DIALOGSUM_DIR RESULTS_DIR [TOTAL_SECONDS]
set -uo pipefail
data=${1:?DialogSum directory}
results=${2:?results directory}
total=${3:-500}
start=$(date +%s)
mkdir -p "$results"
python scripts/prepare_embedded_model.py >"$results/prepare.log" 2>&1  # SmolLM2's tokenizer counts the lengths
timeout 150 python -m pytest tests/test_fused_lora.py tests/test_packing.py -k "cuda or test_packing" -q -rs \
  >"$results/pytest.log" 2>&1
echo "pytest exit $? after $(( $(date +%s) - start )) s: $(tail -1 "$results/pytest.log")"
setups=(trl-liger-b64 ours-fast-fused-liger ours-fast-fused ours-fast-b64 lean-fused-liger-b32 ours-fast-liger
        lean-fused-liger-offload-b16 lean-fused-liger-b64 trl-padded-liger ours-fast-fused-liger-compile trl-padded
        ours-lean-b16)
python scripts/benchmark.py --steps 6 --warmup 2 --generation_dialogues 0 --data "$data" \
  --time_budget $(( total - ($(date +%s) - start) - 10 )) --setups "${setups[@]}" \
  --profile_setup ours-fast-fused-liger --output "$results/benchmark-3b-fused.json" 2>&1 | grep -v Warning | tail -40
echo "done in $(( $(date +%s) - start )) s"
