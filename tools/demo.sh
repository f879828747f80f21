#!/usr/bin/env bash
# Set up .venv-tflite and run the demo (a live hot-swap under an inference loop).
source "$(dirname "$0")/env.sh"
make_env tflite
exec "$ROOT/.venv-tflite/bin/python" -m tflite_hotswap.demo "$@"
