#!/usr/bin/env bash
# Chapter 8's GPU checks in one go (about 3-4 minutes on one H200): the GPU tests (scale, core and
# the PPO-RLHF trainer end to end), then the GPU benchmark (GPT-2-small-sized policy, batch 64,
# 128 + 128 tokens, fp32 without TF32 vs bf16).
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]
#
# Writes OUT_DIR/{gpu_tests.log,scaling_gpu.json,gpu_bench.log,nvidia-smi.txt} (default
# /tmp/gpu_check); copy scaling_gpu.json to ppo_lab/results/ to commit it. Needs a CUDA build of
# torch with transformers and peft: PYTHON=/path/to/python overrides the interpreter.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${1:-${OUT:-/tmp/gpu_check}}
mkdir -p "$OUT_DIR"
if [ -z "${PYTHON:-}" ]; then
  PYTHON=python3
  [ -x .venv/bin/python ] && .venv/bin/python -c "import torch; assert torch.cuda.is_available()" 2>/dev/null \
    && PYTHON=.venv/bin/python
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1
nvidia-smi > "$OUT_DIR/nvidia-smi.txt" 2>&1
"$PYTHON" -c "import torch, transformers, peft; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.device_count())" | tee "$OUT_DIR/versions.txt"
status=0
timeout 400 "$PYTHON" -m pytest -q -p no:cacheprovider -rs tests/gpu/test_scale_gpu.py tests/gpu/test_core_cuda.py tests/gpu/test_rlhf_gpu.py \
  2>&1 | tee "$OUT_DIR/gpu_tests.log" || status=1
timeout 200 "$PYTHON" benchmarks/scaling.py --gpu --out "$OUT_DIR/scaling_gpu.json" 2>&1 \
  | tee "$OUT_DIR/gpu_bench.log" || status=1
exit $status
