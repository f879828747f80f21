#!/usr/bin/env bash
# ruff and mypy --strict over the package (configured in pyproject.toml): zero findings.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-$(command -v python3.11 || command -v python3)}"
venv="$ROOT/.venv-lint"
if [ ! -x "$venv/bin/mypy" ]; then
    "$PY" -m venv "$venv"
    # numpy and prometheus-client for their type information.
    "$venv/bin/pip" install -q ruff mypy numpy prometheus-client
fi
cd "$ROOT"
"$venv/bin/ruff" check tflite_hotswap
"$venv/bin/mypy"
