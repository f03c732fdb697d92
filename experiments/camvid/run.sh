#!/usr/bin/env bash
# The CamVid segmentation experiment of docs/RESULTS.md, on CPU: ./experiments/camvid/run.sh [stage ...]
# Stages (default: all, in order): data pretrain finetune scratch evaluate table
#   data:     unpack ../shared/datasets/camvid (train/val/test) and the 1k ImageNet sample; list the
#             unlabelled pre-training images (CamVid train + ImageNet sample)
#   pretrain: BEiT MIM of the backbone (experiments/camvid/pretrain.yaml)
#   finetune: seg_camvid_demo_cpu from the pre-trained backbone, for each seed in $SEEDS
#   scratch:  the same recipe and budget from random weights, for each seed
#   evaluate: mIoU of every run on the 233 CamVid test images (JSON + overlay PNG per run)
#   table:    mean ± std per arm and per-class IoU (markdown) from the JSON files
# Every stage resumes: a finished run is skipped, a killed one continues from its checkpoint.
set -euo pipefail
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
OUT=${BEIT_CAMVID_OUT:-/tmp/beit_camvid}
SHARED=${BEIT_SHARED:-../shared/datasets}
SEEDS=${SEEDS:-0 1 2}
STEPS=${STEPS:-400}
STAGES=${*:-data pretrain finetune scratch evaluate table}
DATA=$OUT/data/camvid
SEG="--config beit_ds/recipes/seg_camvid_demo_cpu.yaml data.path=$DATA/train data.eval_path=$DATA/val
     schedule.steps=$STEPS checkpoint.save_every_steps=$STEPS finetune.evaluate=false log.progress_bar=false"
seg() {  # seg NAME SEED INIT [overrides...]: one fine-tuning run (skipped once exported)
  local name=$1 seed=$2 init=$3; shift 3
  [ -f "$OUT/$name/export/model.safetensors" ] && { echo "   $name done"; return; }
  python launch/segment.py $SEG schedule.seed=$seed finetune.init=$init checkpoint.output_dir=$OUT/$name "$@"
}
for stage in $STAGES; do
  echo "== $stage $(date +%T)"
  case $stage in
    data) mkdir -p $OUT/data
          [ -d $DATA ] || tar xzf $SHARED/camvid/camvid_segnet_480x360.tar.gz -C $OUT/data
          [ -d $OUT/data/imagenet-sample-1k ] || tar xf $SHARED/imagenet-sample-1k/imagenet_sample_1k_160.tar -C $OUT/data
          ls $DATA/train/images/*.jpg $OUT/data/imagenet-sample-1k/images/*.jpg > $OUT/pretrain_list.txt ;;
    pretrain) python launch/pretrain.py --config experiments/camvid/pretrain.yaml checkpoint.output_dir=$OUT/pretrain \
                data.path=$OUT/pretrain_list.txt ;;
    finetune) for s in $SEEDS; do seg beit_seed$s $s $OUT/pretrain/checkpoints; done ;;
    scratch) for s in $SEEDS; do seg scratch_seed$s $s "" optim.layer_decay=1.0; done ;;
    evaluate) for run in $OUT/beit_seed* $OUT/scratch_seed*; do
                [ -f $run/test.json ] || [ ! -f $run/export/model.safetensors ] && continue
                python launch/evaluate_segmentation.py --config beit_ds/recipes/seg_camvid_demo_cpu.yaml \
                  data.path=$DATA/train data.eval_path=$DATA/test finetune.init=$run/export/model.safetensors \
                  --out $run/test.json
              done ;;
    table) python experiments/camvid/table.py $OUT ;;
    *) echo "unknown stage $stage" >&2; exit 2 ;;
  esac
done
echo "== done $(date +%T)"
