"""mIoU / mAcc / aAcc of a segmentation model: an alias of ``launch/evaluate.py`` (which
evaluates every kind) with a segmentation recipe as the default.

    python launch/evaluate_segmentation.py --config seg_camvid_demo_cpu \\
        finetune.init=runs/seg_camvid_demo_cpu data.path=data/camvid/train data.eval_path=data/camvid/test
"""

from beit_ds.cli import evaluate_main, run_cli

if __name__ == "__main__":
    run_cli(lambda: evaluate_main(default_recipe="seg_camvid_demo_cpu", description=__doc__))
