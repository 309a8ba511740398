#!/usr/bin/env bash
# The benchmarks on a GPU, in one short command (after scripts/train_default_gpu.sh, on the same
# machine while it is warm): capture against the official-style batch-1 loop and the hook overhead
# (the shipped default and a GPT-2-small shape with GPT-2's vocabulary), and training tokens/s and
# TFLOP/s of the default recipe at its size, at RbS's width and at a 124M GPT-2 size, in bfloat16.
# Prints everything; benchmarks/README.md records the figures.
#
#   scripts/benchmarks_gpu.sh [OUT_FILE]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-/dev/stdout}
PYTHON=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
cd benchmarks
{
  echo "== $(date -u +%FT%TZ) $($PYTHON -c 'import torch; print(torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else "no cuda")')"
  echo "== capture_throughput (default checkpoint)"
  "$PYTHON" capture_throughput.py --device "$DEVICE" --threads 8 --n 128 --batch 64
  echo "== capture_throughput (gpt2-124m shape, GPT-2's vocabulary)"
  "$PYTHON" capture_throughput.py --device "$DEVICE" --threads 8 --size gpt2-124m --vocab 50257 --n 64 --batch 32
  echo "== train_throughput (configs/rbs/coconut.yaml, bfloat16, batch 256)"
  "$PYTHON" train_throughput.py --device "$DEVICE" --threads 8 --sizes rbs,rbs-768,gpt2-124m --batch 256 --steps 20 \
    --precision bfloat16
} 2>&1 | grep -v -E "FutureWarning|outputs = func|return forward_call" | tee "$OUT"
