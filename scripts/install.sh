#!/usr/bin/env bash
# Install llm_scratch and its PyTorch into the active Python environment.
# The README, .ci/run and both Dockerfiles all install through this one script.
#
#   bash scripts/install.sh                 # torch as your pip resolves it, then the package + dev tools
#   TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu bash scripts/install.sh     # CPU-only torch
#   TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 bash scripts/install.sh   # CUDA 12.8 torch
#   EXTRAS=dev,hf bash scripts/install.sh   # other extras (dev, hf, slurm)
#
# torch is installed first and on its own: a plain `torch` requirement resolved together with
# the package would pull PyPI's default build (several GB of CUDA libraries on Linux).
set -euo pipefail
cd "$(dirname "$0")/.."

TORCH_VERSION=${TORCH_VERSION:-2.13.0}
EXTRAS=${EXTRAS:-dev}

if [ -n "${TORCH_INDEX_URL:-}" ]; then
  python -m pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}"
else
  python -m pip install "torch==${TORCH_VERSION}"
fi
# compat mode puts the checkout on sys.path, so Hydra's plugin scan finds the sweep launcher in
# hydra_plugins/ (the default editable mode hides namespace packages from that scan).
python -m pip install -e ".[${EXTRAS}]" --config-settings editable_mode=compat
python -c "import torch, llm_scratch; print('llm_scratch', llm_scratch.__version__, 'with torch', torch.__version__, '| CUDA available:', torch.cuda.is_available())"
