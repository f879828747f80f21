#!/usr/bin/env bash
# Set up both backend environments and print the benchmark table for each.
source "$(dirname "$0")/env.sh"
cd "$ROOT"
ensure_test_tools
for backend in tflite-runtime litert; do
    env_name="${backend%-runtime}"
    [ -x "$ROOT/.venv-$env_name/bin/pytest" ] || make_env "$env_name"
    echo "=== benchmarks with backend $backend"
    TFLITE_HOTSWAP_BACKEND="$backend" "$ROOT/.venv-$env_name/bin/python" benches/report.py "$@"
done
