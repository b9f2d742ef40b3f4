#!/usr/bin/env bash
# Run on a CUDA machine from the repository root: PGD throughput and limit ratio on a
# ResNet-18-size model, bf16 vs fp32 agreement on the quickstart, AutoAttack's components on a
# WideResNet-28-10 (ours / the original's). Finishes in <= 10 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
export ROBUSTBENCH_CL_HOME="${ROBUSTBENCH_CL_HOME:-$PWD/.cache/robustbench_cl}"
PYTHON="${PYTHON:-.venv/bin/python}"
timeout 600 "$PYTHON" benchmarks/gpu_check.py "$@"
