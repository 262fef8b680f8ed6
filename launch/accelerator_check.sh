#!/usr/bin/env bash
# One GPU or TPU machine's figures for the paper-size runs, in under 8 minutes: DSSL's stage-2 train
# step on ResNet-50 and on CLIP ViT-B/16 at 384x128, beside the plain ResNet-50's step, batch
# 32/128/256, bfloat16 then float32 (images/s, step time pipelined and blocking, FLOPs of the
# unoptimized program, MFU, memory), and the evaluation encoders' images/s and captions/s, into
# OUT/accelerator_check.json and OUT/accelerator_check.md (benchmarks/accelerator_check.py).
# Needs jax, flax, optax, orbax-checkpoint, ml-collections, absl and numpy: no TensorFlow.
#   launch/accelerator_check.sh --out /tmp/check --peak_tflops 989   # the chip's bf16 peak
#   launch/accelerator_check.sh --quick --out /tmp/check              # tiny models, CPU, a minute
set -euo pipefail
cd "$(dirname "$0")/.."
exec python -m benchmarks.accelerator_check "$@"
