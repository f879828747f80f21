#!/usr/bin/env bash
# Set up both backend environments and print the benchmark table for each:
# first on the native path, then the per-call and swap benchmarks again on the
# wrapper fallback (TFLITE_HOTSWAP_NATIVE=0).  Arguments go to pytest (-k ...)
# in both runs; without them the fallback run takes the call and swap ones.
source "$(dirname "$0")/env.sh"
cd "$ROOT"
ensure_test_tools
fallback=("$@")
[ $# -gt 0 ] || fallback=(-k "call_overhead or swap_under_load")
for backend in tflite-runtime litert; do
    env_name="${backend%-runtime}"
    [ -x "$ROOT/.venv-$env_name/bin/pytest" ] || make_env "$env_name"
    echo "=== benchmarks with backend $backend (native path)"
    TFLITE_HOTSWAP_BACKEND="$backend" "$ROOT/.venv-$env_name/bin/python" benches/report.py "$@"
    echo "=== benchmarks with backend $backend, native path off (the wrapper fallback)"
    TFLITE_HOTSWAP_BACKEND="$backend" TFLITE_HOTSWAP_NATIVE=0 "$ROOT/.venv-$env_name/bin/python" \
        benches/report.py "${fallback[@]}"
done
