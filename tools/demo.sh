#!/usr/bin/env bash
# Set up .venv-tflite and run the demo: a device following a model repository
# (served on loopback) while a 30 frames/s loop runs -- adoption, a refused
# model, a rollback, crash-loop protection, a staged rollout.
#   --swap      the raw hot-swap stress demo instead (a tight loop, swaps every 0.5 s)
#   --training  the on-device training demo instead
source "$(dirname "$0")/env.sh"
make_env tflite
# Run from inside the venv folder: "python -m" puts the current folder first on
# sys.path, and from the repository root the uncompiled source tree would win.
cd "$ROOT/.venv-tflite"
case "${1:-}" in
    --training) shift; exec "$ROOT/.venv-tflite/bin/python" -m tflite_hotswap.demo.training "$@" ;;
    --swap) shift; exec "$ROOT/.venv-tflite/bin/python" -m tflite_hotswap.demo "$@" ;;
    *) exec "$ROOT/.venv-tflite/bin/python" -m tflite_hotswap.demo.story "$@" ;;
esac
