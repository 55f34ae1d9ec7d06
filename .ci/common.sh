# Shared by .ci/run, .ci/run-latest and .ci/refresh-pins: how each test environment is installed.
# Sourced, not run. Every function takes the Python to install into, then pip's extra arguments
# (the constraints file, or nothing for the newest releases).

pip_install() { "$1" -m pip install -q --disable-pip-version-check "${@:2}"; }

# The main environment: the CPU torch wheel (on local disk; installed first and pinned, or pip
# would pull a multi-GB CUDA torch for flopkit's torch>=2.4), then flopkit with its dev, plot and
# hf extras. Hugging Face's `kernels` goes in too: transformers imports it when present, and it is
# the distribution whose name the repository's kernels/ once shadowed (tests/test_package.py).
install_main() {
    local py="$1"
    shift
    pip_install "$py" "$@" torch==2.13.0
    pip_install "$py" "$@" -e ".[dev,plot,hf]" kernels
}

# The timm environment. timm needs torchvision, and PyPI's Linux torchvision wheels are CUDA
# builds linked against the torch of their own release: torchvision 0.28 beside the CPU torch 2.13
# fails on import ("operator torchvision::nms does not exist"), and the newest torchvision pulls a
# CUDA torch 2.14. So the timm tests run on the matching pair torch 2.14.1 + torchvision 0.29.1
# (CUDA builds that run on CPU, both on local disk: about 1-2.5 min to install).
install_timm() {
    local py="$1"
    shift
    pip_install "$py" "$@" torch==2.14.1 torchvision==0.29.1
    pip_install "$py" "$@" -e ".[dev,timm,hf]" kernels
}

# Venvs go under one scratch directory, removed when the sourcing script exits (each timm venv is
# about 6 GB: left behind, a few runs fill the disk).
CI_SCRATCH="$(mktemp -d)"
trap 'rm -rf "$CI_SCRATCH"' EXIT

new_venv() {
    local dir="$CI_SCRATCH/$1"
    python3 -m venv "$dir"
    echo "$dir/bin/python"
}
