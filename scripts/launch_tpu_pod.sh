#!/usr/bin/env bash
# Runs MEmoBERT on a Cloud TPU VM slice (one host or a pod), from your workstation, with gcloud.
#
#   export TPU_NAME=my-v5e-16 ZONE=us-west4-a [PROJECT=my-project]
#   scripts/launch_tpu_pod.sh setup                 # copy this checkout (git HEAD) to every worker, install
#   scripts/launch_tpu_pod.sh train CONFIG WORKDIR [--config.key=value ...]
#   scripts/launch_tpu_pod.sh finetune CONFIG WORKDIR [--config.key=value ...]
#   scripts/launch_tpu_pod.sh logs | stop
#
# CONFIG is e.g. configs/pretrain.py:base,mesh=v5e-16 (the preset must match the slice: docs/SCALING.md).
# WORKDIR and every data folder must be the same shared path on all workers (a gcsfuse-mounted bucket or
# Filestore): each host writes its part of every checkpoint there and reads its own slice of the shards.
# The same command runs on every worker; jax.distributed joins them (MEMOBERT_DISTRIBUTED=1). A run
# resumes by itself from WORKDIR/checkpoints: after a preemption, run the same `train` again.
# Check first that the config fits: python -m memobert_jax.aot_compile --config CONFIG (any machine).
# REMOTE_PYTHON (default python3) must be Python >= 3.11 on the workers.
set -euo pipefail

: "${TPU_NAME:?set TPU_NAME to the TPU VM name}"
: "${ZONE:?set ZONE to the TPU VM zone}"
REMOTE_DIR=${REMOTE_DIR:-memobert-jax}  # relative to the home folder on each worker
REMOTE_PYTHON=${REMOTE_PYTHON:-python3}
LOG=${LOG:-memobert.log}
gcloud_args=(--zone "$ZONE" ${PROJECT:+--project "$PROJECT"})

on_all_workers() {
  gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${gcloud_args[@]}" --worker=all --command="$1"
}

# Pretraining on several hosts needs every host to build the same shapes: one bucket per modality
# (the largest; pipeline.pretraining_dataset refuses several buckets with more than one process).
ONE_BUCKET=(--config.data.text_buckets=32 --config.data.visual_buckets=36 --config.data.acoustic_buckets=64)

launch() {  # entry point, config, workdir, extra flags...
  local module=$1 config=$2 workdir=$3
  shift 3
  local extra=()
  [[ $module == train ]] && extra=("${ONE_BUCKET[@]}")
  local args
  args=$(printf ' %q' "--config=$config" "--workdir=$workdir" "${extra[@]}" "$@")
  # nohup: the run survives the ssh session; the pid file lets `stop` end exactly this run.
  on_all_workers "cd $REMOTE_DIR && MEMOBERT_DISTRIBUTED=1 nohup .venv/bin/python -m memobert_jax.$module$args \
    > ~/$LOG 2>&1 < /dev/null & echo \$! > ~/memobert.pid"
  echo "started on every worker of $TPU_NAME; follow with: $0 logs"
}

case "${1:-}" in
  setup)
    archive=$(mktemp --suffix=.tar.gz)
    git -C "$(dirname "$0")/.." archive --format=tar.gz -o "$archive" HEAD
    gcloud compute tpus tpu-vm scp "$archive" "$TPU_NAME:memobert-jax.tar.gz" "${gcloud_args[@]}" --worker=all
    rm -f "$archive"
    on_all_workers "mkdir -p $REMOTE_DIR && tar -xzf memobert-jax.tar.gz -C $REMOTE_DIR && cd $REMOTE_DIR && \
      $REMOTE_PYTHON -m venv .venv && .venv/bin/pip install -q -r requirements.txt -r requirements-tpu.txt && \
      .venv/bin/python -c 'import jax, libtpu; print(\"jax\", jax.__version__, \"installed\")'"
    ;;
  train | finetune)
    [[ $# -ge 3 ]] || { echo "usage: $0 $1 CONFIG WORKDIR [--config.key=value ...]" >&2; exit 2; }
    module=$1
    shift
    launch "$module" "$@"
    ;;
  logs)
    gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${gcloud_args[@]}" --worker=0 --command="tail -n 50 -f ~/$LOG"
    ;;
  stop)
    on_all_workers 'if [ -f ~/memobert.pid ]; then kill "$(cat ~/memobert.pid)" 2>/dev/null || true; fi; \
      rm -f ~/memobert.pid'
    ;;
  *)
    sed -n '2,18p' "$0"
    exit 2
    ;;
esac
