#!/usr/bin/env bash
# The GPU acceptance run, for the few minutes a CUDA machine is available: the tests marked
# `gpu`, then short benchmarks (GPT-2 124M bf16-mixed tokens/s and MFU at context 1024, eager and
# compiled; trainer=fsdp on every GPU, with and without activation checkpointing; loop vs fused
# attention at context 1024; KV-cache decoding; a 2-job gpu_parallel sweep). Offline, in under
# 8 minutes, installing nothing beyond the README's install. Prints one summary table and writes
# <OUT_DIR>/gpu_check.json (and each step's log and JSON). Without a CUDA GPU it says so, runs
# nothing and exits 0.
#
#   bash scripts/gpu_check.sh [OUT_DIR]            # default: outputs/gpu_check/<date_time>
#   bash scripts/gpu_check.sh OUT_DIR --dry-run    # the steps and their commands, run nothing
#   bash scripts/gpu_check.sh OUT_DIR --budget 300 # seconds for all steps (default 450)
#
# The corpora and GPT-2's BPE files are read from LLM_SCRATCH_DATA_DIR (default
# ../shared/data, then ./shared/data) and TIKTOKEN_CACHE_DIR (default: <data dir>/tiktoken).
# Steps: scripts/gpu_check.py. PYTHON=<interpreter> chooses the Python (default python3).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-outputs/gpu_check/$(date +%Y-%m-%d_%H-%M-%S)}
shift || true
# the Python that has the README's install: $PYTHON, else python3 (a venv's, or the system's)
python=${PYTHON:-$(command -v python3 || command -v python)}
exec "$python" scripts/gpu_check.py "$out" "$@"
