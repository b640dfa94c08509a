#!/usr/bin/env bash
# A short pretraining run of the tiny model on this machine, over N fake CPU devices: exercises the
# data pipeline, sharding, gradient accumulation, checkpoints and resume without any accelerator.
#
#   scripts/local_debug.sh DATA VOCAB [WORKDIR] [--config.key=value ...]
#     DATA   a dataset folder written by python -m data_prep.write_shards (docs/DATA.md)
#     VOCAB  its WordPiece vocab.txt (the model's vocab_size is set from it)
#   DEVICES=8 fake CPU devices (1: a plain CPU run); PLATFORM=gpu runs on one GPU instead; STEPS=20.
#
# Run it twice: the second run finds WORKDIR/checkpoints and resumes (raise STEPS to go further).
# Frame dimensions other than the paper's need --config.model.visual_dim=.. / acoustic_dim=.. (the
# error names them). The same step's memory and FLOPs: python -m memobert_jax.aot_compile --local ...
set -euo pipefail

[[ $# -ge 2 ]] || { sed -n '2,13p' "$0"; exit 2; }
data=$1 vocab=$2 workdir=${3:-/tmp/memobert-debug}
shift $(( $# >= 3 ? 3 : 2 ))
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
DEVICES=${DEVICES:-8}
STEPS=${STEPS:-20}

if [[ ${PLATFORM:-cpu} == gpu ]]; then
  mesh=gpu
else
  mesh=cpu
  export JAX_PLATFORMS=cpu XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=$DEVICES"
fi
vocab_size=$("$PYTHON" -c 'import sys; from memobert_jax import tokenizer as t
print(t.load_tokenizer("wordpiece", sys.argv[1]).vocab_size)' "$vocab")
# 32 examples per step, 2 per device per micro-batch: with 8 devices, 2 accumulated micro-batches of 16.
# One bucket per modality, as on a pod: one compile per task instead of one per task and length mix.
exec "$PYTHON" -m memobert_jax.train --config="configs/pretrain.py:tiny,mesh=$mesh,steps=$STEPS" --workdir="$workdir" \
  --config.data.train="$data" --config.data.tokenizer.path="$vocab" --config.model.vocab_size="$vocab_size" \
  --config.data.text_buckets=32 --config.data.visual_buckets=36 --config.data.acoustic_buckets=64 \
  --config.batch_size=32 --config.per_device_batch=2 --config.checkpoint.every_steps=5 --config.log_every_steps=5 "$@"
