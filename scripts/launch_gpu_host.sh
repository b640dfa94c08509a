#!/usr/bin/env bash
# Trains or finetunes on every GPU of this host, one process (jax sees all visible GPUs; pick some with
# CUDA_VISIBLE_DEVICES). Checks first that the step compiles and fits the GPUs' memory.
#
#   scripts/launch_gpu_host.sh CONFIG WORKDIR [--config.key=value ...]
#   scripts/launch_gpu_host.sh configs/pretrain.py:base,mesh=gpu8 runs/base \
#       --config.data.train=data/pretrain --config.data.tokenizer.path=bert-base-uncased/vocab.txt \
#       --config.init.checkpoint=runs/bert-base-init
#
# CONFIG: a pretraining config (-> memobert_jax.train) or a finetuning one (-> memobert_jax.finetune).
# Presets: gpu (one GPU, 160 x 4 accumulation, the paper's) or gpu8 (every GPU: 8 x 80 in one micro-batch).
# The run resumes by itself from WORKDIR/checkpoints: after a crash, run the same command again.
# Environment: PYTHON (default .venv/bin/python, with jax[cuda12] installed: docs/SCALING.md),
# CHECK=0 skips the compile check.
set -euo pipefail

[[ $# -ge 2 ]] || { sed -n '2,15p' "$0"; exit 2; }
config=$1 workdir=$2
shift 2
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
module=train
[[ $config == *finetune.py* ]] && module=finetune

if [[ ${CHECK:-1} == 1 ]]; then
  # Same config and overrides; the data flags are accepted and unused. Exits non-zero if a step does not fit.
  "$PYTHON" -m memobert_jax.aot_compile --config="$config" --local "$@"
fi
exec "$PYTHON" -m "memobert_jax.$module" --config="$config" --workdir="$workdir" "$@"
