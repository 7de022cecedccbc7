#!/usr/bin/env bash
# Create .venv with pgolf and its test extras (README command 1 runs this first; so does CI).
# On a machine without an NVIDIA GPU it prefers a CPU build of PyTorch: a local wheel if pip's
# find-links has one, else the PyTorch CPU index, else whatever PyPI resolves.
set -euo pipefail
cd "$(dirname "$0")"

python3 -m venv .venv
pip=(.venv/bin/python -m pip)
"${pip[@]}" install --quiet --upgrade pip
if ! .venv/bin/python -c "import torch" 2>/dev/null && ! command -v nvidia-smi >/dev/null 2>&1; then
    wheels=$(mktemp -d)
    if "${pip[@]}" download --quiet --no-index --no-deps --dest "$wheels" torch 2>/dev/null; then
        "${pip[@]}" install --quiet "$wheels"/torch-*.whl        # a local wheel; its needs from PyPI
    else
        "${pip[@]}" install --quiet --timeout 30 torch --index-url https://download.pytorch.org/whl/cpu \
            || echo "setup.sh: no CPU build of torch reachable; pip will pick one" >&2
    fi
    rm -rf "$wheels"
fi
# The RunPod executor is its own distribution in plugins/ (not on PyPI), so it goes in first and
# pgolf's extras that name it find it installed. compat: a plain .pth entry, so Snakemake's plugin
# discovery (pkgutil) sees it.
"${pip[@]}" install --quiet -e './plugins/snakemake-executor-plugin-runpod' --config-settings editable_mode=compat
"${pip[@]}" install --quiet -e '.[test]' --config-settings editable_mode=compat
echo "pgolf: set up in .venv; run the embedded default with .venv/bin/snakemake --cores 2 results/ablation_summary.tsv"
