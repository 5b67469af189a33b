#!/usr/bin/env bash
# Create .venv and install rrt with pinned dependencies. torch is installed first and pinned to
# 2.13.0 so that pip takes the CPU wheel instead of pulling gigabytes of CUDA packages.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q "torch==2.13.0"
python -m pip install -q -e ".[all,dev]"
echo "rrt installed in $(pwd)/.venv"
