#!/usr/bin/env bash
# Stage the two upstream ViT-5 sources and the pure-Python packages they import into ./upstream/
# (git-ignored), so that a GPU machine without network can run benchmarks/parity_checkpoints.py:
#
#   bash benchmarks/stage_upstream.sh NVSUBQ_GIT_DIR VIT5_GIT_DIR [PYTHON]
#   PYTHONPATH=upstream/site python -m benchmarks.parity_checkpoints \
#       --nvsubq-src upstream/nvSubquadratic --official-src upstream/ViT-5
#
# NVSUBQ_GIT_DIR / VIT5_GIT_DIR: git directories (bare or not) of NVIDIA-BioNeMo/nvSubquadratic and
# wangf3014/ViT-5. PYTHON (default python3) must import timm, einops and omegaconf; their package
# directories are copied (timm's hub client is optional and not copied). Nothing here is committed.
set -euo pipefail
nvsubq=${1:?NVSUBQ_GIT_DIR}
vit5=${2:?VIT5_GIT_DIR}
python=${3:-python3}
cd "$(dirname "$0")/.."
rm -rf upstream
mkdir -p upstream/nvSubquadratic upstream/ViT-5 upstream/site
git -C "$nvsubq" archive HEAD nvsubquadratic VERSION LICENSE | tar x -C upstream/nvSubquadratic
git -C "$vit5" archive HEAD models_vit5.py rope.py LICENSE | tar x -C upstream/ViT-5
for pkg in timm einops omegaconf antlr4; do
    dir=$("$python" - "$pkg" <<'PY'
import importlib.util, os, sys
spec = importlib.util.find_spec(sys.argv[1])
if spec is None or not spec.submodule_search_locations:
    sys.exit(f"stage_upstream: {sys.argv[1]} is not importable by this python")
print(list(spec.submodule_search_locations)[0])
PY
)
    cp -r "$dir" upstream/site/
done
find upstream -name __pycache__ -prune -exec rm -rf {} +
du -sh upstream
