#!/usr/bin/env bash
# The GPU suite, one prepared command for a GPU slot (<= 12 minutes of device time, start-up included):
# the device and its peak; the BEiT-B MIM step in bf16 with the DALL-E-architecture tokenizer online
# (ZeRO-2 and stage 0, eager and model.compile: blocks, a batch sweep; img/s, model and pipeline MFU);
# then the right-sized CIFAR-10 study (experiments/cifar10/gpu_study.py) with the time left. Writes one
# JSON and one markdown table, rewritten after every run, so a deadline or SIGTERM leaves partial results.
# bench/gpu_suite.py says more.
#
#   bash bench/gpu_suite.sh                          # GPU: runs/gpu_suite.json + runs/gpu_suite.md, 12 min
#   bash bench/gpu_suite.sh --smoke --out FILE       # CPU smoke test (CI): tiny model, fp32, 2-minute deadline
#   bash bench/gpu_suite.sh --minutes 10 --no-study  # other options: python bench/gpu_suite.py --help
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec python bench/gpu_suite.py "$@"
