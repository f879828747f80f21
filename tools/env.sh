# Shared by tools/demo.sh, tools/test.sh and tools/bench.sh: make the virtual
# environments the project runs in, from nothing but Python 3 and gcc.
#
#   .venv-tflite  tflite-runtime (the default backend) with numpy < 2
#   .venv-litert  ai-edge-litert (LiteRT) with numpy 2
#
# Both get the same wheel, built once.  Source this file; call make_env NAME.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-$(command -v python3.11 || command -v python3)}"

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

apt_install() {
    # Debian packages the build needs that a minimal machine may lack.
    if command -v apt-get >/dev/null; then
        # One apt at a time: .ci/run sets up ARM beside the x86 runs.
        as_root flock /tmp/tflite_hotswap-apt.lock apt-get update -qq >/dev/null
        as_root flock /tmp/tflite_hotswap-apt.lock \
            env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
    else
        echo "missing system packages ($*) and no apt-get to install them" >&2
        return 1
    fi
}

ensure_python_build_deps() {
    local include
    include="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
    local version
    version="$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
    if [ ! -f "$include/Python.h" ]; then apt_install "python$version-dev"; fi
    if ! "$PY" -c 'import ensurepip, venv' 2>/dev/null; then apt_install "python$version-venv"; fi
}

ensure_test_tools() {
    # The delivery tests serve a repository with a real nginx on loopback, and
    # the download benchmark compares against curl.
    local missing=()
    command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx)
    command -v curl >/dev/null || missing+=(curl)
    if [ ${#missing[@]} -gt 0 ]; then apt_install "${missing[@]}"; fi
}

build_wheel() {
    # One wheel for both environments: the extensions use no numpy C API.
    # Built the way a board without a matching wheel builds it: the sdist
    # first, then the wheel from the unpacked sdist (python -m build does both).
    if [ -z "${WHEEL:-}" ]; then
        ensure_python_build_deps
        rm -rf "$ROOT/dist"
        "$PY" -m venv "$ROOT/.venv-build"
        "$ROOT/.venv-build/bin/pip" install -q --upgrade pip build
        "$ROOT/.venv-build/bin/python" -m build -q --outdir "$ROOT/dist" "$ROOT" >/dev/null
        WHEEL="$(ls "$ROOT"/dist/tflite_hotswap-*.whl)"
        SDIST="$(ls "$ROOT"/dist/tflite_hotswap-*.tar.gz)"
    fi
}

make_env() {  # make_env tflite|litert|tf [extra pip args...]
    local name="$1"; shift
    local venv="$ROOT/.venv-$name"
    build_wheel
    "$PY" -m venv "$venv"
    "$venv/bin/pip" install -q --upgrade pip
    if [ "$name" = tflite ]; then
        "$venv/bin/pip" install -q --force-reinstall "$WHEEL[test]" "$@"
    elif [ "$name" = tf ]; then
        # TensorFlow: the tensorflow backend and make_trainable (the [convert] extra).
        "$venv/bin/pip" install -q --force-reinstall --no-deps "$WHEEL"
        "$venv/bin/pip" install -q tensorflow-cpu pytest pytest-benchmark hypothesis \
            prometheus-client safetensors "$@"
    else
        # LiteRT with numpy 2: the wheel's default dependencies (tflite-runtime,
        # numpy < 2 on Python 3.11) are left out on purpose.
        "$venv/bin/pip" install -q --force-reinstall --no-deps "$WHEEL"
        "$venv/bin/pip" install -q "numpy>=2" ai-edge-litert pytest pytest-benchmark hypothesis \
            prometheus-client safetensors "$@"
    fi
}
