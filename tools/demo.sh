#!/usr/bin/env bash
# Set up .venv-tflite and run the demo (a live hot-swap under an inference loop);
# --training runs the on-device training demo instead.
source "$(dirname "$0")/env.sh"
make_env tflite
# Run from inside the venv folder: "python -m" puts the current folder first on
# sys.path, and from the repository root the uncompiled source tree would win.
cd "$ROOT/.venv-tflite"
if [ "${1:-}" = "--training" ]; then
    shift
    exec "$ROOT/.venv-tflite/bin/python" -m tflite_hotswap.demo.training "$@"   # on-device training demo
fi
exec "$ROOT/.venv-tflite/bin/python" -m tflite_hotswap.demo "$@"
