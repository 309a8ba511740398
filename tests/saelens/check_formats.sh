#!/usr/bin/env bash
# Loads every hand-written SAE directory of tests/saelens/format_cases.py in SAELens itself and compares what it
# reads and computes with our loader (docs/formats.md, SAE directories).
# SAELens pins TransformerLens < 4, so it lives in its own virtual environment, never in .venv.
# Usage: bash tests/saelens/check_formats.sh   (SAELENS_VENV: that environment; default .venv-saelens)
# Not part of `make test`: it downloads SAELens and its dependencies from the package registry.
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV=${SAELENS_VENV:-.venv-saelens}
OUT=$(mktemp -d)
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q torch==2.13.0                     # the local CPU wheel first
    "$VENV/bin/pip" install -q "sae-lens>=6"
fi
"$VENV/bin/python" tests/saelens/check_formats.py "$OUT"
PYTHONPATH=. .venv/bin/python tests/saelens/compare_formats.py "$OUT"
