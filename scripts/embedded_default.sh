#!/usr/bin/env bash
# The embedded default end to end, offline on the CPU: corpus -> tokenizer -> tasks -> pretrained
# source (and the reduced-size baseline, distilled from it) -> recursive (B=2, stepwise) and
# relaxed (average + SVD LoRA) models -> uptraining with distillation -> early-exit
# post-training -> evaluation.
# Usage: scripts/embedded_default.sh [RESULTS_DIR]   (default results/embedded)
# Each step is skipped when its output exists, so a killed run continues where it stopped
# (pretraining and uptraining also resume from their last checkpoint). Budgets are the defaults
# of config/config.yaml; the *_ARGS variables below add options (the tests shrink everything).
# Until the Snakemake workflow lands this script is the main job; every step is one rrt command.
# With MLFLOW_TRACKING_URI set (e.g. sqlite:///$PWD/mlflow.db), every training step is an MLflow run.
set -euo pipefail
R=${1:-results/embedded}
cd "$(dirname "$0")/.."
[ -n "${VIRTUAL_ENV:-}" ] || . .venv/bin/activate
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
CORPUS_ARGS=${CORPUS_ARGS:-}; TOKENIZER_ARGS=${TOKENIZER_ARGS:-}; TASKS_ARGS=${TASKS_ARGS:-}
PRETRAIN_ARGS=${PRETRAIN_ARGS:-}; UPTRAIN_ARGS=${UPTRAIN_ARGS:-}; EARLY_EXIT_ARGS=${EARLY_EXIT_ARGS:---tokens 262144 --lr 5e-4}
EVAL_ARGS=${EVAL_ARGS:---threads 1}; LORA_RANK=${LORA_RANK:-32}  # not RANK: torchrun's
mkdir -p "$R"
step() { local out=$1; shift; if [ -e "$out" ]; then echo "== $out exists, skipped"; else echo "== $*"; "$@"; fi; }

# shellcheck disable=SC2086  # the *_ARGS are option lists
{
step "$R/corpus"    rrt corpus --out "$R/corpus" $CORPUS_ARGS
step "$R/tokenizer" rrt tokenizer --corpus "$R/corpus" --out "$R/tokenizer" $TOKENIZER_ARGS
step "$R/tasks"     rrt tasks --corpus "$R/corpus" --tokenizer "$R/tokenizer" --out "$R/tasks" $TASKS_ARGS
step "$R/source"    rrt pretrain --corpus "$R/corpus" --tokenizer "$R/tokenizer" --out "$R/source" $PRETRAIN_ARGS
LAYERS=$(python -c "import json,sys; print(json.load(open(sys.argv[1]))['num_hidden_layers'])" "$R/source/config.json")
step "$R/reduced"   rrt pretrain --corpus "$R/corpus" --tokenizer "$R/tokenizer" --out "$R/reduced" $PRETRAIN_ARGS --layers $((LAYERS / 2)) --teacher "$R/source"
step "$R/recursive" rrt convert --source "$R/source" --loops 2 --init stepwise --out "$R/recursive"
step "$R/recursive-avg" rrt convert --source "$R/source" --loops 2 --init average --out "$R/recursive-avg"
step "$R/relaxed"   rrt relax --source "$R/source" --recursive "$R/recursive-avg" --rank "$LORA_RANK" --out "$R/relaxed"
step "$R/recursive-up" rrt uptrain --model "$R/recursive" --teacher "$R/source" --corpus "$R/corpus" --out "$R/recursive-up" $UPTRAIN_ARGS
step "$R/relaxed-up"   rrt uptrain --model "$R/relaxed" --teacher "$R/source" --corpus "$R/corpus" --out "$R/relaxed-up" $UPTRAIN_ARGS
step "$R/relaxed-ee"   rrt uptrain --model "$R/relaxed-up" --teacher "$R/source" --corpus "$R/corpus" --out "$R/relaxed-ee" --early-exit $UPTRAIN_ARGS $EARLY_EXIT_ARGS
for m in source reduced recursive-up relaxed-up relaxed-ee; do
  step "$R/eval/$m.json" rrt evaluate --model "$R/$m" --tasks embedded --task-dir "$R/tasks" --out "$R/eval/$m.json" $EVAL_ARGS
done
for b in 1 2; do
  step "$R/eval/relaxed-ee-exit$b.json" rrt evaluate --model "$R/relaxed-ee" --tasks embedded --task-dir "$R/tasks" --exit-loop $b --out "$R/eval/relaxed-ee-exit$b.json" $EVAL_ARGS
done
}
echo "== done: models (each with metrics.json where trained) and evaluations under $R"
