#!/usr/bin/env bash
# Issue 14 on one GPU: SmolLM2 trained with recipes/smollm2-135m-gpu.yaml (ROUGE-2 of 100 validation summaries picks
# the checkpoint; a quarter of the training rows name their speakers), then
#   - the test split, base vs fine-tuned (dynamic decoding): ROUGE against the tag-only prompt's 43.52/17.02/35.27
#     (README), generation stats, report.html;
#   - the validation split with named speakers (--named_speakers): the invented-speaker share, target < 1%;
#   - the test split again, fine-tuned only, with --decoding static and continuous: seconds, and whether the
#     summaries equal the dynamic ones (decoding.json).
# PART (default all): "quality" trains and scores the test and named splits (about 6 min), "decoding" times the
# fine-tuned test summaries by each decoding, dynamic first (about 3 min), of the run "quality" left in outputs/
# (same machine, still warm) or of the training output dir RUN names. At most 8 files land in RESULTS_DIR per part.
#   bash scripts/gpu_evaluation.sh DIALOGSUM_DIR RESULTS_DIR [quality|decoding|all]
set -euo pipefail
data=${1:?DialogSum directory}
results=${2:?results directory}
part=${3:-all}
run=${RUN:-outputs/smollm2-135m-gpu-evaluation}
mkdir -p "$results" outputs
start=$(date +%s)
evaluate() {  # output dir name, then evaluate.py options
  local name=$1; shift
  python scripts/evaluate.py "$run" --dataset "$data" --batch_size 128 --output_dir "$run/$name" "$@" \
    >"$run/$name.log" 2>&1 || { tail -20 "$run/$name.log"; exit 1; }
  echo "$name done after $(( $(date +%s) - start )) s"
}
if [ "$part" != decoding ]; then
  rm -rf "$run"  # a rerun on the same machine trains afresh (sft.py refuses a finished output dir)
  python scripts/prepare_embedded_model.py >/dev/null
  python scripts/sft.py recipes/smollm2-135m-gpu.yaml --dataset_name "$data" --report_to none --output_dir "$run" \
    >"$run.train.log" 2>&1 || { tail -20 "$run.train.log"; exit 1; }
  echo "trained in $(( $(date +%s) - start )) s"
  evaluate eval-test --split test
  evaluate eval-named --split validation --named_speakers
  cp "$run/trainer_state.json" "$run/run_results.json" "$results/"
  cp "$run/eval-test/eval_results.json" "$run/eval-test/report.html" "$run/eval-test/loss.png" "$results/"
  cp "$run/eval-named/eval_results.json" "$results/named_eval_results.json"
  cp "$run/eval-named/report.html" "$results/named_report.html"
  python -c "
import json; m = json.load(open('$results/eval_results.json')); n = json.load(open('$results/named_eval_results.json'))
print('test ROUGE: tuned', m['tuned']['mean_over_references'], 'base', m['base']['mean_over_references'])
print('test stats: tuned', m['stats']['tuned'], 'base', m['stats']['base'])
print('named validation: invented-speaker share tuned', n['stats']['tuned']['invented_share'], 'base',
      n['stats']['base']['invented_share'], 'ROUGE tuned', n['tuned']['mean_over_references'])
s = json.load(open('$results/trainer_state.json'))
print('ROUGE while training:', [(e['step'], e.get('eval_rouge2'), e.get('eval_rouge_seconds')) for e in s['log_history'] if 'eval_loss' in e], 'best', s.get('best_model_checkpoint'))
"
fi
[ "$part" = quality ] && { echo "all done in $(( $(date +%s) - start )) s"; exit 0; }
evaluate eval-test-dynamic --split test --no_base --decoding dynamic
evaluate eval-test-static --split test --no_base --decoding static
evaluate eval-test-continuous --split test --no_base --decoding continuous
python - "$run" "$results/decoding.json" <<'EOF'
import json, sys

run, out = sys.argv[1:]
def load(name):
    rows = [json.loads(line) for line in open(f"{run}/{name}/predictions.jsonl", encoding="utf-8")]
    return rows, json.load(open(f"{run}/{name}/eval_results.json", encoding="utf-8"))
reference, reference_metrics = load("eval-test-dynamic")
summary = {}
for decoding, name in (("dynamic", "eval-test-dynamic"), ("static", "eval-test-static"), ("continuous", "eval-test-continuous")):
    rows, metrics = load(name)
    summary[decoding] = {
        "identical_summaries": sum(a["tuned"] == b["tuned"] for a, b in zip(rows, reference)),
        "dialogues": len(rows),
        "rouge_mean_over_references": metrics["tuned"]["mean_over_references"],
        "rouge1_difference": round(metrics["tuned"]["mean_over_references"]["rouge1"]
                                   - reference_metrics["tuned"]["mean_over_references"]["rouge1"], 2),
        "timing": metrics["timing"]["tuned"],
    }
json.dump(summary, open(out, "w"), indent=2)
print(json.dumps(summary, indent=2))
EOF
echo "all done in $(( $(date +%s) - start )) s"
