#!/usr/bin/env bash
# Set up both backend environments and run the whole test suite in each.
source "$(dirname "$0")/env.sh"
cd "$ROOT"
ensure_test_tools
status=0
for backend in tflite-runtime litert; do
    env_name="${backend%-runtime}"
    make_env "$env_name"
    echo "=== tests with backend $backend ($("$ROOT/.venv-$env_name/bin/python" -c 'import numpy; print("numpy", numpy.__version__)'))"
    # The venv's own pytest, from the repository root: tests import the
    # installed package, never the source tree.
    TFLITE_HOTSWAP_BACKEND="$backend" "$ROOT/.venv-$env_name/bin/pytest" -p no:cacheprovider "$@" tests \
        || status=$?
done
exit $status
