#!/usr/bin/env bash
# Set up both backend environments and run the whole test suite in each, then
# the packaging checks: install from the sdist in a fresh venv, and the
# developer setup (editable install, import from the repository root).
# ARM (emulated, slow, needs root) is tools/test-arm.sh, which .ci/run runs.
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
# The native path's fallback: each backend through its wrapper, over the
# runtime's own tests (TFLITE_HOTSWAP_NATIVE=0).
for backend in tflite-runtime litert; do
    env_name="${backend%-runtime}"
    echo "=== runtime tests with backend $backend, native path off (the wrapper fallback)"
    TFLITE_HOTSWAP_BACKEND="$backend" TFLITE_HOTSWAP_NATIVE=0 "$ROOT/.venv-$env_name/bin/pytest" \
        -p no:cacheprovider "$@" tests/test_swap.py tests/test_outputs.py tests/test_workers.py \
        tests/test_bad_input.py tests/test_stateful.py tests/test_hardening.py tests/test_training.py \
        tests/test_gil.py || status=$?
done
# The tests that need TensorFlow (the tensorflow backend, make_trainable) in a
# third environment; everywhere else they skip, saying so.
make_env tf
echo "=== tests that need TensorFlow (backend tensorflow)"
TFLITE_HOTSWAP_BACKEND=tensorflow "$ROOT/.venv-tf/bin/pytest" -p no:cacheprovider "$@" \
    tests/test_training_make.py tests/test_backend.py || status=$?

check() {  # check DESCRIPTION COMMAND...: one packaging check, counted
    echo "=== packaging: $1"
    shift
    if "$@"; then checks_passed=$((checks_passed + 1)); else
        echo "FAILED" >&2; checks_failed=$((checks_failed + 1)); status=1; fi
}

sdist_contents() {
    # The Cython sources are in the sdist, generated C is not (it would go stale).
    local files
    files="$(tar -tzf "$SDIST")"
    local f
    for f in _slots.pyx _slots.pxd _buffers.pyx _buffers.pxd _train.pyx _train_native.h _verify.pyx _verify.h; do
        grep -q "/pyx/tflite_hotswap/$f\$" <<<"$files" || { echo "sdist lacks pyx/tflite_hotswap/$f" >&2; return 1; }
    done
    if grep -E '\.(c|so)$' <<<"$files" >&2; then echo "sdist holds generated files (above)" >&2; return 1; fi
}

sdist_install() {
    # What pip does on a board without a matching wheel: build from the sdist.
    rm -rf "$ROOT/.venv-sdist"
    "$PY" -m venv "$ROOT/.venv-sdist"
    "$ROOT/.venv-sdist/bin/pip" install -q --upgrade pip
    "$ROOT/.venv-sdist/bin/pip" install -q --no-binary tflite_hotswap "$SDIST"
    (cd "$(mktemp -d)" && "$ROOT/.venv-sdist/bin/python" -c '
import tflite_hotswap, tflite_hotswap._slots, tflite_hotswap._buffers
assert "site-packages" in tflite_hotswap._slots.__file__, tflite_hotswap._slots.__file__
print("imported", tflite_hotswap.__version__, "from", tflite_hotswap.__file__)')
}

developer_setup() {
    # The README's developer setup: an editable install builds the extensions
    # in place, and `import tflite_hotswap` works from the repository root.
    rm -rf "$ROOT/.venv-dev"
    "$PY" -m venv "$ROOT/.venv-dev"
    "$ROOT/.venv-dev/bin/pip" install -q --upgrade pip
    "$ROOT/.venv-dev/bin/pip" install -e "$ROOT" >"$ROOT/.venv-dev/install.log" 2>&1 \
        || { tail -30 "$ROOT/.venv-dev/install.log" >&2; return 1; }
    (cd "$ROOT" && "$ROOT/.venv-dev/bin/python" -c '
import os, tflite_hotswap, tflite_hotswap._slots
assert tflite_hotswap._slots.__file__.startswith(os.getcwd()), tflite_hotswap._slots.__file__
print("imported from the source tree:", tflite_hotswap._slots.__file__)')
}

checks_passed=0; checks_failed=0
check "the sdist holds .pyx/.pxd and no generated C" sdist_contents
check "pip install from the sdist in a fresh venv, then import" sdist_install
check "developer setup: pip install -e ., import from the repository root" developer_setup
echo "packaging: $checks_passed passed, $checks_failed failed"
exit $status
