#!/usr/bin/env bash
# The CIFAR-10 experiment of docs/RESULTS.md, on CPU: ./experiments/cifar10/run.sh [stage ...]
# Stages (default: all, in order): tokenizer pretrain lists finetune scratch linprobe linprobe_random
# (lists: file lists of a class-balanced 20k subset of the train images and of the 10k test images)
# (scratch: same recipe from random weights, without layer decay; linprobe_random: probe of random weights)
set -euo pipefail
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
EXP=experiments/cifar10
OUT=${BEIT_CIFAR_OUT:-/tmp/beit_cifar}
STAGES=${*:-tokenizer pretrain lists finetune scratch linprobe linprobe_random}
for stage in $STAGES; do
  echo "== $stage $(date +%T)"
  case $stage in
    tokenizer) python launch/train_tokenizer.py --config $EXP/tokenizer.yaml checkpoint.output_dir=$OUT/tokenizer ;;
    pretrain) python launch/pretrain.py --config $EXP/pretrain.yaml checkpoint.output_dir=$OUT/pretrain \
                tokenizer.path=$OUT/tokenizer/export/tokenizer.safetensors ;;
    lists) python $EXP/make_lists.py /tmp/beit_ds_cache/cifar10_jpeg-*/ $OUT ;;
    finetune) python launch/finetune.py --config $EXP/finetune.yaml checkpoint.output_dir=$OUT/finetune \
                finetune.init=$OUT/pretrain/checkpoints ;;
    scratch) python launch/finetune.py --config $EXP/finetune.yaml checkpoint.output_dir=$OUT/scratch \
                finetune.init= optim.layer_decay=1.0 ;;
    linprobe) python launch/linear_probe.py --config $EXP/linprobe.yaml checkpoint.output_dir=$OUT/linprobe \
                finetune.init=$OUT/pretrain/checkpoints ;;
    linprobe_random) python launch/linear_probe.py --config $EXP/linprobe.yaml checkpoint.output_dir=$OUT/linprobe_random \
                finetune.init= ;;
    *) echo "unknown stage $stage" >&2; exit 2 ;;
  esac
done
echo "== done $(date +%T)"
