#!/usr/bin/env bash
# Checks that an SAE written by `probe sae train` loads in SAELens and computes the same features.
# SAELens pins TransformerLens < 4, so it lives in its own virtual environment, never in .venv.
# Usage: bash tests/saelens/check_saelens.sh [SAE_DIR]   (default: trains a small one first)
# Not part of `make test`: it downloads SAELens and its dependencies from the package registry.
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV=${SAELENS_VENV:-.venv-saelens}
SAE_DIR=${1:-}
if [ -z "$SAE_DIR" ]; then
    SAE_DIR=$(mktemp -d)/sae
    .venv/bin/probe sae train --n 200 --epochs 5 --d-sae 64 --out "$SAE_DIR"
fi
.venv/bin/python tests/saelens/reference.py "$SAE_DIR"          # our encode/decode on fixed inputs
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q torch==2.13.0                     # the local CPU wheel first
    "$VENV/bin/pip" install -q "sae-lens>=6"
fi
"$VENV/bin/python" tests/saelens/load_in_saelens.py "$SAE_DIR"
