#!/usr/bin/env bash
# Build the Cython extensions with AddressSanitizer + UndefinedBehaviorSanitizer
# and run the kernel, slot and bad-input tests against that build.
#
#   bash tools/sanitize.sh [pytest args...]      (default: the sanitizer test set)
#
# The build lives in its own environment, .venv-asan (tflite-runtime, numpy<2),
# built from a copy of the working tree with a private build directory, so it
# never mixes sanitized objects into the normal wheel.  No setup.py change is
# needed: setuptools appends CFLAGS/LDFLAGS from the environment to every
# extension's compile and link line.
#
# The Python interpreter is not instrumented, so the ASan runtime is loaded
# first with LD_PRELOAD.  Every sanitizer report goes to a log file under
# $SANITIZE_LOGS (also from child processes: the isolation prober, the fuzz
# harness's forked children); the run fails if any report was written, whatever
# pytest said.  ASan leaves SIGSEGV/SIGBUS/SIGFPE alone (handle_*=0): a crash in
# a child that the library or a test expects (the isolation probe containing a
# backend crash) keeps its signal, and an unexpected one still fails its test.
#
# Exit status: 0 clean; 1 tests failed; 2 a sanitizer report was written
# (reports are printed); 3 the build failed.
set -uo pipefail
source "$(dirname "$0")/env.sh"
set +e
cd "$ROOT"

VENV="$ROOT/.venv-asan"
LOGS="${SANITIZE_LOGS:-$ROOT/.sanitize-logs}"
SAN_FLAGS="-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer -g"
TESTS=(tests/test_kernels.py tests/test_bad_input.py tests/test_swap.py tests/test_workers.py
       tests/test_outputs.py tests/test_fuzz_kernels.py tests/test_kernel_crashers.py
       tests/test_stateful.py tests/test_hardening.py tests/test_training.py tests/test_numpy_abi.py
       tests/test_model_bytes.py tests/test_verify.py)

build() {
    set -e
    ensure_python_build_deps
    if [ ! -x "$VENV/bin/python" ]; then
        "$PY" -m venv "$VENV"
        "$VENV/bin/pip" install -q --upgrade pip
        "$VENV/bin/pip" install -q "tflite-runtime>=2.13" "numpy>=1.21,<2" \
            "setuptools>=77" "Cython>=3.0" wheel pytest hypothesis safetensors
    fi
    local src
    src="$(mktemp -d)"
    trap 'rm -rf "$src"' RETURN
    # The working tree as it is (tracked and new files), not the last commit.
    git ls-files -z --cached --others --exclude-standard | tar -c --null -T - | tar -x -C "$src"
    # The sources that make the extensions: rebuild only when they change.
    local stamp
    stamp="$( (echo "$SAN_FLAGS"; cat "$src"/setup.py "$src"/pyproject.toml "$src"/pyx/tflite_hotswap/*) | sha256sum)"
    if [ "$stamp" != "$(cat "$VENV/.sanitize-stamp" 2>/dev/null)" ]; then
        # -O1 (appended after setup.py's -O3 through its TFLITE_HOTSWAP_CPU_FLAGS
        # hook): the level ASan is meant for, and a quarter of the compile time.
        (cd "$src" && CFLAGS="$SAN_FLAGS" LDFLAGS="-fsanitize=address,undefined" TFLITE_HOTSWAP_CPU_FLAGS="-O1" \
            "$VENV/bin/pip" install -q --no-deps --no-build-isolation --force-reinstall . >/dev/null)
        echo "$stamp" > "$VENV/.sanitize-stamp"
    else
        # Same extensions: refresh only the Python files.
        (cd "$src" && "$VENV/bin/python" - "$VENV" <<'PY'
import pathlib, shutil, sys, sysconfig
site = pathlib.Path(sysconfig.get_paths()["platlib"]) / "tflite_hotswap"
for path in pathlib.Path("tflite_hotswap").rglob("*"):
    if path.is_file() and path.suffix in (".py", ".pyi", ".tflite", ".typed"):
        target = site / path.relative_to("tflite_hotswap")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
PY
        )
    fi
    set +e
}

echo "=== sanitize: building the extensions with -fsanitize=address,undefined"
started=$SECONDS
( build ) || { echo "sanitize: build failed" >&2; exit 3; }
echo "    built in $((SECONDS - started)) s"

libasan="$(gcc -print-file-name=libasan.so)"
if [ ! -e "$libasan" ]; then echo "sanitize: libasan.so not found (gcc $(gcc -dumpversion))" >&2; exit 3; fi
# The extension must really be instrumented, or the run proves nothing.
site="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["platlib"])')"
for ext in "$site"/tflite_hotswap/_buffers.*.so "$site"/tflite_hotswap/_slots.*.so "$site"/tflite_hotswap/_train.*.so "$site"/tflite_hotswap/_verify.*.so; do
    if [ "$(nm -D "$ext" 2>/dev/null | grep -c __asan_report)" = 0 ]; then
        echo "sanitize: $ext is missing or not instrumented" >&2; exit 3
    fi
done

rm -rf "$LOGS"
mkdir -p "$LOGS"
# libstdc++ too: python is not linked against it, and ASan's __cxa_throw
# interceptor must find the real one when the backend (C++) throws.
export LD_PRELOAD="$libasan $(gcc -print-file-name=libstdc++.so)"
# detect_leaks=0: CPython and the backends keep memory until exit by design.
export ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:abort_on_error=1:handle_segv=0:handle_sigbus=0:handle_sigfpe=0:log_path=$LOGS/asan:${ASAN_OPTIONS_EXTRA:-}"
export UBSAN_OPTIONS="halt_on_error=1:abort_on_error=1:print_stacktrace=1:log_path=$LOGS/ubsan"
export TFLITE_HOTSWAP_BACKEND=tflite-runtime
export TFLITE_HOTSWAP_FUZZ_EXAMPLES="${TFLITE_HOTSWAP_FUZZ_EXAMPLES:-30}"
export TFLITE_HOTSWAP_FUZZ_SHRINK="${TFLITE_HOTSWAP_FUZZ_SHRINK:-0}"  # minimal repros: test_kernel_crashers.py

echo "=== sanitize: tests under ASan + UBSan"
started=$SECONDS
if [ $# -eq 0 ]; then set -- "${TESTS[@]}"; fi
# The venv's own pytest (not python -m pytest): tests import the installed
# package, never the source tree.  --continue-on-collection-errors: one test file that cannot be imported must
# not stop the others from running under the sanitizers.
"$VENV/bin/pytest" -p no:cacheprovider -q --durations=8 --continue-on-collection-errors "$@" 2>&1 \
    | tee "$LOGS/pytest.out"
status=${PIPESTATUS[0]}
echo "    tests ran in $((SECONDS - started)) s (pytest exit $status)"

# Reports land in the log files; UBSan's, when it aborts, may go to stderr
# instead, which pytest captured into its output.
mv "$LOGS/pytest.out" "$LOGS/../.sanitize-pytest.out"
reports=("$LOGS"/*)
inline="$(grep -cE "runtime error:|ERROR: AddressSanitizer" "$LOGS/../.sanitize-pytest.out")"
if [ -e "${reports[0]}" ] || [ "$inline" != 0 ]; then
    echo "=== sanitize: sanitizer reports: ${#reports[@]} log file(s), $inline in the test output" >&2
    for f in "${reports[@]}"; do [ -e "$f" ] && { echo "--- $f" >&2; head -40 "$f" >&2; }; done
    grep -E "runtime error:|ERROR: AddressSanitizer" "$LOGS/../.sanitize-pytest.out" | sort | uniq -c >&2
    exit 2
fi
echo "=== sanitize: no sanitizer reports"
[ $status -eq 0 ] || exit 1
exit 0
