#!/usr/bin/env bash
# The GPU throughput suite, one prepared command writing one JSON (<= 8 min on one GPU):
# BEiT-B MIM step + DALL-E-sized tokenizer at 224² through the DeepSpeed engine (bench/gpu_pretrain.py):
#   bf16 and fp16 ZeRO-2; bf16 ZeRO stage 0 / 1 / 2; bf16 ZeRO-2 compiled; the job's JPEG loader on the
#   full-size ImageNet sample (repeated) and decoding on the GPU (torchvision.io.decode_jpeg);
#   img/s, MFU (model + tokenizer FLOPs / the GPU's dense peak), peak memory per run.
#
#   bash bench/gpu_suite.sh                  # GPU; writes runs/gpu_suite.json
#   bash bench/gpu_suite.sh --smoke          # CPU smoke test (CI): tiny model, 2 steps per run
#   bash bench/gpu_suite.sh --out FILE [--data TAR] [--batch N] [extra gpu_pretrain.py options]
set -euo pipefail
cd "$(dirname "$0")/.."

out=runs/gpu_suite.json
data=../shared/datasets/imagenet-sample-1k/imagenet_sample_334_fullsize.tar
smoke=()
batch=128
steps=(--steps 20 --warmup 5)
extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --smoke) smoke=(--smoke); batch=4; steps=(--steps 2 --warmup 1); shift ;;
    --out) out=$2; shift 2 ;;
    --data) data=$2; shift 2 ;;
    --batch) batch=$2; shift 2 ;;
    *) extra+=("$1"); shift ;;
  esac
done

runs=bf16:2:eager:synthetic,fp16:2:eager:synthetic,bf16:0:eager:synthetic,bf16:1:eager:synthetic
runs+=,bf16:2:compiled:synthetic
data_args=()
if [ -f "$data" ]; then
  runs+=,bf16:2:eager:loader,bf16:2:eager:gpu_decode
  cores=$(python -c "import os; print(len(os.sched_getaffinity(0)))")
  workers=$(( cores > 2 ? cores - 2 : 1 ))  # one GPU: every core but the training process's
  [ ${#smoke[@]} -gt 0 ] && workers=1
  data_args=(--data "$data" --workers "$workers" --data-repeats 20)
else
  echo "gpu_suite: $data not found: loader runs left out" >&2
fi

mkdir -p "$(dirname "$out")"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
python bench/gpu_pretrain.py ${smoke[@]+"${smoke[@]}"} --batch "$batch" "${steps[@]}" --runs "$runs" \
  ${data_args[@]+"${data_args[@]}"} ${extra[@]+"${extra[@]}"} | tee "$out.log"
tail -n 1 "$out.log" > "$out"
echo "gpu_suite: wrote $out" >&2
