#!/usr/bin/env bash
# GPU check (issue 15): gemma-3-4b-it's shapes with random weights, loaded by steerheal in bfloat16 and in
# 4-bit, one tiny round of the loop on each; prints per-phase seconds and peak GPU memory. No downloads.
#   bash bench/gpu_check.sh [--json PATH] [--workdir DIR]     # on a GPU machine (under 10 min on one GPU)
#   docker run --gpus all --rm steerheal bash bench/gpu_check.sh   # the same inside the image
#   bash bench/gpu_check.sh --tiny                               # CPU smoke test of the script (tiny shapes)
# Uses the checkout's .venv if there is one (else python3 / $PYTHON); needs ~9 GB of free disk for the
# saved random model (--workdir or TMPDIR to move it). Stops itself after GPU_CHECK_TIMEOUT s (570).
# Exit codes: 0 OK; 1 a precision failed; 3 no CUDA GPU (nothing measured); 124 timed out.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used --format=csv || true
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
exec timeout --signal=INT --kill-after=20 "${GPU_CHECK_TIMEOUT:-570}" "$PYTHON" bench/gpu_check.py "$@"
