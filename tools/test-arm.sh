#!/usr/bin/env bash
# Build and test tflite_hotswap on ARM, from nothing, under qemu user-mode
# emulation in a Debian bookworm root (what Raspberry Pi OS is built on).
#
#   tools/test-arm.sh aarch64|armv7l [BACKEND...] [-- PYTEST ARGS...]
#   tools/test-arm.sh armv6
#
#   aarch64  backends tflite-runtime (2.14, numpy < 2) and litert (ai-edge-litert,
#            numpy 2), both from PyPI: what `pip install` gives on 64-bit
#            Raspberry Pi OS.
#   armv7l   backend tflite-runtime only (ai-edge-litert has no armv7l wheels);
#            numpy from Debian's python3-numpy in a --system-site-packages venv
#            (PyPI has no armv7l numpy wheel): the 32-bit Raspberry Pi OS recipe.
#   armv6    no emulation: the extensions cross-compiled on the host the way
#            32-bit Raspberry Pi OS's gcc builds them (-march=armv6 -mfpu=vfp
#            -mfloat-abi=hard), where 64-bit atomics are calls into libatomic;
#            checks that setup.py linked -latomic so every __atomic_*_8 symbol
#            resolves, and that the check does catch a build without it.
#
# Steps, each said as it starts and timed:
#   1. host tools: qemu-user-static and debootstrap (apt), binfmt_misc mounted
#      and the qemu handler registered if the kernel has none;
#   2. the root: debootstrap of bookworm for the arch, cached in
#      $ARM_CACHE/bookworm-ARCH (default .cache/arm/ in the repository, ignored
#      by git); made once, reused by every later run;
#   3. the sdist, built on the host from the working tree;
#   4. the wheel, built *inside* the ARM root from that sdist with `pip wheel`
#      (so this is also the check that a board without a matching wheel can
#      build one from the sdist), cached by the sdist's content;
#   5. per backend a venv in the root, the wheel installed, and the tests run
#      against the installed package.  Everything runs in a private mount
#      namespace (unshare -m): /proc, /dev, and an ARM /proc/cpuinfo over the
#      host's (LiteRT >= 2.2 segfaults under qemu-user when cpuinfo names an
#      x86 CPU) are gone when the run ends, whatever way it ends.
#
# Tests: by default the whole suite.  ARM_TESTS="..." (pytest arguments) picks
# a subset; ARM_TESTS=smoke is the subset ARM_SMOKE_TESTS below, which .ci/run
# uses.  Emulation is
# about 100x slower than the host: wall-clock expectations in tests do not
# hold here.
#
# Needs root (debootstrap, chroot, mount).  Idempotent: re-run at will; a
# broken or partial root is detected and made again.
set -euo pipefail

# The smoke subset .ci/run uses (README: Testing on ARM), chosen for what ARM
# changes: the backends' ARM wheels (backend selection, numpy pairing), output
# binding into the interpreter's tensor memory for every dtype, the slot table's
# atomics under concurrent swaps, corrupt models refused through the isolation
# probe (fork, pipes), the kernels' fixed-case rounding and buffer checks, and
# the byte-table/NEON quantiser against the numpy reference (every byte value),
# the native path's symbol lookup on the ARM wheels (LiteRT's hidden
# functions, found in its symbol table and self-tested in a child process), and
# model bytes in mappings of their own with a retired interpreter's delegates
# freed off the GIL (struct layouts differ on 32-bit), and the model verifier's
# C walk (its faults, its limits, mutated models).
# About 2-4 minutes per backend under emulation.  Left out: the hypothesis
# kernel tests (hundreds of examples each: tens of minutes under emulation),
# delivery/store/manifest (pure Python, nothing ARM-specific) and the
# hardening/worker suites (long waits and stress loops, ~100x slower here).
ARM_SMOKE_TESTS="tests/test_backend.py tests/test_outputs.py tests/test_swap.py tests/test_bad_input.py
  tests/test_symbols.py tests/test_numpy_abi.py tests/test_model_bytes.py tests/test_verify.py
  tests/test_kernels.py::test_rounding_half_away_from_zero_and_saturation
  tests/test_kernels.py::test_kernel_rejects_bad_buffers
  tests/test_kernels.py::test_byte_table_matches_reference"

usage() { echo "usage: $0 aarch64|armv7l [tflite-runtime|litert ...] [-- pytest args]  |  $0 armv6" >&2; exit 2; }
die() { echo "test-arm: $*" >&2; exit 1; }
say() { echo "=== [arm $ARCH] $*"; }

[ $# -ge 1 ] || usage
ARCH="$1"; shift
BACKENDS=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do BACKENDS+=("$1"); shift; done
[ "${1:-}" = "--" ] && shift
PYTEST_ARGS=("$@")

case "$ARCH" in
    aarch64) DEB_ARCH=arm64; QEMU=aarch64; TRIPLET=aarch64-linux-gnu
             [ ${#BACKENDS[@]} -gt 0 ] || BACKENDS=(tflite-runtime litert) ;;
    armv7l)  DEB_ARCH=armhf; QEMU=arm; TRIPLET=arm-linux-gnueabihf
             [ ${#BACKENDS[@]} -gt 0 ] || BACKENDS=(tflite-runtime) ;;
    armv6)   DEB_ARCH=armhf; QEMU=arm; TRIPLET=arm-linux-gnueabihf; BACKENDS=() ;;
    *) usage ;;
esac
for b in ${BACKENDS[@]+"${BACKENDS[@]}"}; do
    case "$ARCH/$b" in
        aarch64/tflite-runtime|aarch64/litert|armv7l/tflite-runtime) ;;
        armv7l/litert) die "ai-edge-litert has no armv7l wheels: only tflite-runtime on armv7l" ;;
        *) die "unknown backend '$b' (tflite-runtime or litert)" ;;
    esac
done
[ "$ARCH" = armv6 ] || [ "$(id -u)" = 0 ] || die "needs root (debootstrap, chroot, mount): run it with sudo"

source "$(dirname "$0")/env.sh"   # ROOT, PY, apt_install, build venv helpers
CACHE="${ARM_CACHE:-$ROOT/.cache/arm}"
RFS="$CACHE/bookworm-$DEB_ARCH"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
mkdir -p "$CACHE"
START=$SECONDS
declare -A TIMES=()
timed() {  # timed NAME command...: run it, remember its wall time
    local name="$1"; shift
    local t0=$SECONDS
    "$@"
    TIMES[$name]=$((SECONDS - t0))
    say "$name: $((SECONDS - t0)) s"
}

# ------------------------------------------------- armv6: the libatomic check
ARMV6_FLAGS="-march=armv6 -mfpu=vfp -mfloat-abi=hard -marm"
ARMHF_LIBATOMIC=/usr/arm-linux-gnueabihf/lib/libatomic.so.1

armv6_toolchain() {
    local missing=()
    command -v arm-linux-gnueabihf-gcc >/dev/null || missing+=(gcc-arm-linux-gnueabihf)
    command -v arm-linux-gnueabihf-readelf >/dev/null || missing+=(binutils-arm-linux-gnueabihf)
    [ -f "$ARMHF_LIBATOMIC" ] || missing+=(libatomic1-armhf-cross)
    if [ ${#missing[@]} -gt 0 ]; then say "installing ${missing[*]}"; apt_install "${missing[@]}"; fi
    # Python's armhf headers (pyconfig.h differs per arch): one .deb, fetched
    # with a private apt configuration; the host's dpkg is left alone.
    local dir="$CACHE/armv6" sysroot="$CACHE/armv6/sysroot"
    [ -f "$sysroot/usr/include/arm-linux-gnueabihf/python3.11/pyconfig.h" ] && return 0
    local apt="$dir/apt"
    rm -rf "$apt" "$sysroot"
    mkdir -p "$apt/lists/partial" "$apt/archives/partial" "$apt/debs"
    touch "$apt/status"
    echo "deb [arch=armhf signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $MIRROR bookworm main" > "$apt/sources.list"
    local opts=(-o APT::Architecture=armhf -o APT::Architectures::=armhf
                -o Dir::State="$apt" -o Dir::State::status="$apt/status" -o Dir::Cache="$apt"
                -o Dir::Etc::SourceList="$apt/sources.list" -o Dir::Etc::SourceParts=/nonexistent
                -o Debug::NoLocking=1 -o APT::Sandbox::User=root)
    apt-get "${opts[@]}" -qq update
    (cd "$apt/debs" && apt-get "${opts[@]}" -qq download libpython3.11-dev:armhf)
    dpkg-deb -x "$apt"/debs/libpython3.11-dev_*_armhf.deb "$sysroot"
}

armv6_build() {  # armv6_build OUT [ENV...]: setup.py build_ext, cross, from the sdist
    local out="$1"; shift
    local dir="$CACHE/armv6" inc="$CACHE/armv6/sysroot/usr/include"
    local venv="$dir/venv"
    "$venv/bin/python" -c 'import Cython, setuptools' 2>/dev/null || {
        rm -rf "$venv"; "$PY" -m venv "$venv"
        "$venv/bin/pip" install -q --upgrade pip "setuptools>=77" "Cython>=3.0" wheel; }
    rm -rf "$dir/src" "$out"
    mkdir -p "$dir/src"
    tar -xzf "$SDIST" -C "$dir/src" --strip-components=1
    (cd "$dir/src" && env "$@" CC="arm-linux-gnueabihf-gcc $ARMV6_FLAGS" \
        LDSHARED="arm-linux-gnueabihf-gcc $ARMV6_FLAGS -shared" \
        CFLAGS="-I$inc/python3.11 -I$inc" LDFLAGS="" \
        "$venv/bin/python" setup.py build_ext --build-lib "$out" --build-temp "$out.tmp") \
        >"$out.log" 2>&1 || { tail -30 "$out.log" >&2; die "cross build failed: see $out.log"; }
    grep 'tflite_hotswap:' "$out.log" || true
}

atomics_resolve() {  # atomics_resolve DIR: every 64-bit __atomic call in its .so resolves?
    local so ok=0 defined
    defined="$(arm-linux-gnueabihf-nm -D --defined-only "$ARMHF_LIBATOMIC" | awk '{print $3}')"
    for so in "$1"/tflite_hotswap/*.so; do
        local name calls
        name="$(basename "$so")"
        arm-linux-gnueabihf-readelf -h "$so" | grep -q 'Machine:.*ARM' || { echo "  $name: not an ARM object" >&2; ok=1; continue; }
        calls="$(arm-linux-gnueabihf-nm -D --undefined-only "$so" | awk '{print $2}' | grep -E '^__atomic_[a-z_]+_8' || true)"
        if [ -z "$calls" ]; then echo "  $name: no 64-bit atomic calls"; continue; fi
        echo "  $name: calls $(echo $calls)"
        if ! arm-linux-gnueabihf-readelf -d "$so" | grep -q 'NEEDED.*\[libatomic\.so\.1\]'; then
            echo "  $name: ...but does not link libatomic.so.1: import fails with 'undefined symbol'" >&2; ok=1; continue
        fi
        local c
        for c in $calls; do
            grep -qx "${c%%@*}@@*LIBATOMIC_1.0" <<<"$defined" || grep -qx "${c%%@*}" <<<"$defined" \
                || { echo "  $name: $c is not in libatomic.so.1" >&2; ok=1; }
        done
        echo "  $name: links libatomic.so.1, which defines them"
    done
    return $ok
}

armv6_check() {
    timed "toolchain" armv6_toolchain
    timed "sdist" make_sdist
    say "cross-compiling for armv6 ($ARMV6_FLAGS)"
    timed "build" armv6_build "$CACHE/armv6/out"
    atomics_resolve "$CACHE/armv6/out" || die "armv6: 64-bit atomics do not resolve (above)"
    # The control: the same build with libatomic withheld must fail the check,
    # or the check proves nothing.
    say "control: the same build with TFLITE_HOTSWAP_LIBATOMIC=0 must fail the check"
    timed "control build" armv6_build "$CACHE/armv6/out-control" TFLITE_HOTSWAP_LIBATOMIC=0
    if atomics_resolve "$CACHE/armv6/out-control" 2>&1; then
        die "armv6: the control build without libatomic passed the check: the check is blind"
    fi
    say "armv6: 1 passed, 0 failed (libatomic linked where 64-bit atomics need it; control caught)"
}

# ------------------------------------------------------------- 1. host tools
host_tools() {
    local missing=()
    command -v debootstrap >/dev/null || missing+=(debootstrap)
    command -v unshare >/dev/null || missing+=(util-linux)
    if [ "$(uname -m)" != "$ARCH" ] && [ ! -x "/usr/bin/qemu-$QEMU-static" ]; then
        missing+=(qemu-user-static)
    fi
    if [ ${#missing[@]} -gt 0 ]; then
        say "installing ${missing[*]}"
        apt_install "${missing[@]}"
    fi
    [ "$(uname -m)" = "$ARCH" ] && return 0
    local binfmt=/proc/sys/fs/binfmt_misc
    if [ ! -e "$binfmt/register" ]; then
        say "mounting binfmt_misc"
        mount -t binfmt_misc binfmt_misc "$binfmt" \
            || die "cannot mount binfmt_misc (a container without CAP_SYS_ADMIN?)"
    fi
    if [ ! -e "$binfmt/qemu-$QEMU" ]; then
        # Debian's qemu-user-static ships the handler line; systemd-binfmt
        # normally loads it at boot, which a container or fresh machine lacks.
        local conf="/usr/lib/binfmt.d/qemu-$QEMU.conf"
        [ -f "$conf" ] || die "$conf missing: is qemu-user-static installed?"
        say "registering the qemu-$QEMU binfmt handler"
        # 'F' in its flags: the kernel opens the interpreter now, so it works in a chroot.
        cat "$conf" > "$binfmt/register"
    fi
    [ "$(cat "$binfmt/qemu-$QEMU" | head -1)" = enabled ] || echo 1 > "$binfmt/qemu-$QEMU"
    grep -q '^flags: .*F' "$binfmt/qemu-$QEMU" \
        || die "the qemu-$QEMU binfmt handler lacks the F flag: it cannot run inside a chroot"
}

# ---------------------------------------------------------------- 2. the root
# Packages in the root: Python 3.11 with venv and headers, gcc, nginx (the
# delivery tests serve a repository with it), and for armv7l Debian's numpy.
# Nothing more: every package is configured under emulation (ca-certificates
# alone takes minutes; pip brings its own CA bundle).
ROOT_PACKAGES="python3,python3-venv,python3-dev,gcc,libc6-dev,nginx-light"
[ "$ARCH" = armv7l ] && ROOT_PACKAGES="$ROOT_PACKAGES,python3-numpy"
STAMP="$RFS/.tflite-hotswap-root"

make_root() {
    local have="" p missing=0
    [ -f "$STAMP" ] && have=",$(cat "$STAMP"),"
    for p in ${ROOT_PACKAGES//,/ }; do [[ "$have" == *",$p,"* ]] || missing=1; done
    if [ -f "$STAMP" ] && [ $missing = 0 ] \
        && chroot "$RFS" /usr/bin/python3 -c 'import venv' 2>/dev/null; then
        say "root $RFS: cached"
        return 0
    fi
    say "root $RFS: debootstrap bookworm $DEB_ARCH (first stage on the host, second under emulation)"
    rm_root "$RFS.partial"
    rm_root "$RFS"
    # First stage only unpacks; then forbid daemons from starting (nginx's
    # postinst would start one on the host's port 80), then the second stage.
    debootstrap --foreign --arch="$DEB_ARCH" --variant=minbase --include="$ROOT_PACKAGES" \
        bookworm "$RFS.partial" "$MIRROR" >"$CACHE/debootstrap-$DEB_ARCH.log" 2>&1 \
        || die "debootstrap (first stage) failed: see $CACHE/debootstrap-$DEB_ARCH.log"
    printf '#!/bin/sh\nexit 101\n' > "$RFS.partial/usr/sbin/policy-rc.d"
    chmod +x "$RFS.partial/usr/sbin/policy-rc.d"
    in_namespace "$RFS.partial" /debootstrap/debootstrap --second-stage \
        >>"$CACHE/debootstrap-$DEB_ARCH.log" 2>&1 \
        || die "debootstrap (second stage) failed: see $CACHE/debootstrap-$DEB_ARCH.log"
    chroot "$RFS.partial" apt-get clean
    echo "$ROOT_PACKAGES" > "$RFS.partial/.tflite-hotswap-root"
    mv "$RFS.partial" "$RFS"
}

rm_root() {  # a root is only ever mounted inside a private namespace, but check
    local dir="$1"
    [ -e "$dir" ] || return 0
    if grep -q " $dir/" /proc/self/mounts; then die "$dir has mounts on it; unmount them first"; fi
    rm -rf --one-file-system "$dir"
}

# An ARM /proc/cpuinfo: a 4-core Cortex-A72 (Raspberry Pi 4), as the kernel
# prints it for 64-bit and for 32-bit userland.
arm_cpuinfo() {
    local i
    for i in 0 1 2 3; do
        echo "processor	: $i"
        if [ "$ARCH" = armv7l ]; then
            echo "model name	: ARMv7 Processor rev 3 (v7l)"
            echo "BogoMIPS	: 108.00"
            echo "Features	: half thumb fastmult vfp edsp neon vfpv3 tls vfpv4 idiva idivt vfpd32 lpae evtstrm crc32"
            echo "CPU implementer	: 0x41"
            echo "CPU architecture: 7"
        else
            echo "BogoMIPS	: 108.00"
            echo "Features	: fp asimd evtstrm crc32 cpuid"
            echo "CPU implementer	: 0x41"
            echo "CPU architecture: 8"
        fi
        echo "CPU variant	: 0x0"
        echo "CPU part	: 0xd08"
        echo "CPU revision	: 3"
        echo
    done
    echo "Hardware	: BCM2835"
    echo "Model		: Raspberry Pi 4 Model B Rev 1.4"
}

host_ca_bundle() {
    # The CA bundle the host's pip trusts (a network may intercept TLS with its
    # own CA, installed on the host): pip's cert setting, else the system one.
    local cert="${PIP_CERT:-}"
    [ -n "$cert" ] || cert="$("$PY" -m pip config get global.cert 2>/dev/null || true)"
    [ -n "$cert" ] || cert=/etc/ssl/certs/ca-certificates.crt
    [ -f "$cert" ] && echo "$cert"
    return 0
}

in_namespace() {  # in_namespace ROOTFS COMMAND...: run COMMAND chrooted, private mounts
    local rfs="$1"; shift
    arm_cpuinfo > "$CACHE/cpuinfo-$ARCH"
    local ca pip_env=()
    ca="$(host_ca_bundle)"
    if [ -n "$ca" ]; then
        mkdir -p "$rfs/etc/ssl"
        cp -L "$ca" "$rfs/etc/ssl/host-ca-bundle.crt"
        pip_env=(PIP_CERT=/etc/ssl/host-ca-bundle.crt SSL_CERT_FILE=/etc/ssl/host-ca-bundle.crt)
    fi
    local index="${PIP_INDEX_URL:-$("$PY" -m pip config get global.index-url 2>/dev/null || true)}"
    [[ "$index" == http* ]] && pip_env+=(PIP_INDEX_URL="$index")
    cp -L /etc/resolv.conf "$rfs/etc/resolv.conf" 2>/dev/null || true
    grep -qs localhost "$rfs/etc/hosts" || printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost\n' >> "$rfs/etc/hosts"
    unshare -m --propagation private -- /bin/bash -euo pipefail -c '
        rfs="$1"; cpuinfo="$2"; shift 2
        mkdir -p "$rfs/proc" "$rfs/dev" "$rfs/sys" "$rfs/tmp"
        mount -t proc proc "$rfs/proc"
        mount --bind "$cpuinfo" "$rfs/proc/cpuinfo"
        mount --rbind /dev "$rfs/dev"
        mount -t sysfs sysfs "$rfs/sys" 2>/dev/null || true
        mount -t tmpfs tmpfs "$rfs/tmp"
        exec chroot "$rfs" /usr/bin/env -i HOME=/root LANG=C.UTF-8 TERM=dumb \
            PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
            PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 PIP_PROGRESS_BAR=off \
            ${TFLITE_HOTSWAP_BACKEND:+TFLITE_HOTSWAP_BACKEND=$TFLITE_HOTSWAP_BACKEND} \
            "$@"
    ' in_namespace "$rfs" "$CACHE/cpuinfo-$ARCH" ${pip_env[@]+"${pip_env[@]}"} "$@"
}
run() { in_namespace "$RFS" "$@"; }

# --------------------------------------------------------------- 3. the sdist
make_sdist() {
    # Its own build venv: tools/test.sh may be rebuilding .venv-build meanwhile.
    ensure_python_build_deps
    local venv="$CACHE/venv-build"
    "$venv/bin/python" -c 'import build' 2>/dev/null || {
        rm -rf "$venv"; "$PY" -m venv "$venv"; "$venv/bin/pip" install -q --upgrade pip build; }
    local out="$CACHE/sdist-$ARCH"
    rm -rf "$out"
    "$venv/bin/python" -m build -q --sdist --outdir "$out" "$ROOT" >/dev/null
    SDIST="$(ls "$out"/tflite_hotswap-*.tar.gz)"
    # The wheel cache key: the sdist's file names and contents (not its mtimes),
    # less the README (and PKG-INFO, which embeds it): prose changes rebuild
    # nothing, every code or build change does.
    local prose=(--exclude='*/README.md' --exclude='*PKG-INFO')
    SDIST_KEY="$( (tar -tzf "$SDIST" "${prose[@]}"; tar -xzOf "$SDIST" "${prose[@]}") | sha256sum | cut -c1-16)"
}

# --------------------------------------------------------------- 4. the wheel
make_wheel() {
    local dir="$RFS/work/wheels/$SDIST_KEY"
    if ls "$dir"/tflite_hotswap-*.whl >/dev/null 2>&1; then
        say "wheel for sdist $SDIST_KEY: cached"
    else
        say "wheel: pip wheel from the sdist, inside the $ARCH root (minutes under emulation)"
        rm -rf "$RFS/work/wheels" "$RFS/work/sdist"
        mkdir -p "$RFS/work/sdist" "$dir.partial"
        cp "$SDIST" "$RFS/work/sdist/"
        [ -x "$RFS/opt/build/bin/pip" ] || run /usr/bin/python3 -m venv /opt/build
        run /opt/build/bin/pip wheel -v --no-deps -w "/work/wheels/$SDIST_KEY.partial" \
            "/work/sdist/$(basename "$SDIST")" >"$CACHE/wheel-$ARCH.log" 2>&1 \
            || { tail -40 "$CACHE/wheel-$ARCH.log" >&2; die "the wheel did not build from the sdist: see $CACHE/wheel-$ARCH.log"; }
        grep -E 'warning:|libatomic' "$CACHE/wheel-$ARCH.log" || true
        mv "$dir.partial" "$dir"
    fi
    WHEEL_IN_ROOT="/work/wheels/$SDIST_KEY/$(basename "$(ls "$dir"/tflite_hotswap-*.whl)")"
    say "wheel: $WHEEL_IN_ROOT"
}

# ------------------------------------------------------- 5. venvs and tests
make_venv() {  # make_venv BACKEND: /opt/venv-BACKEND with its dependencies
    local backend="$1" venv="/opt/venv-$1"
    local stamp="$RFS$venv/.tflite-hotswap-deps"
    local deps
    case "$ARCH/$backend" in
        aarch64/tflite-runtime) deps="tflite-runtime==2.14.0 numpy<2 pytest pytest-benchmark hypothesis" ;;
        aarch64/litert)         deps="ai-edge-litert numpy>=2 pytest pytest-benchmark hypothesis" ;;
        armv7l/tflite-runtime)  deps="tflite-runtime==2.14.0 pytest pytest-benchmark hypothesis" ;;
    esac
    if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$deps" ]; then
        say "venv $venv: $deps"
        rm -rf "$RFS$venv"
        if [ "$ARCH" = armv7l ]; then
            # Debian's python3-numpy (1.24): PyPI has no armv7l numpy wheel.
            run /usr/bin/python3 -m venv --system-site-packages "$venv"
        else
            run /usr/bin/python3 -m venv "$venv"
        fi
        # shellcheck disable=SC2086  # deps is a list of requirement words
        run "$venv/bin/pip" install -q $deps
        echo "$deps" > "$stamp"
    fi
    # The wheel, always afresh; --no-deps: the backend's deps are chosen above.
    run "$venv/bin/pip" install -q --force-reinstall --no-deps "$WHEEL_IN_ROOT"
    run "$venv/bin/python" -c 'import numpy, tflite_hotswap._slots, tflite_hotswap._buffers; print("numpy", numpy.__version__)'
}

run_tests() {  # run_tests BACKEND
    local backend="$1"
    # The tests and the README (its examples are tests) from the working tree;
    # the package under test is the installed wheel.
    rm -rf "$RFS/work/src"
    mkdir -p "$RFS/work/src"
    cp -r "$ROOT/tests" "$ROOT/README.md" "$RFS/work/src/"
    local tests spec="${ARM_TESTS:-tests}"
    [ "$spec" = smoke ] && spec="$ARM_SMOKE_TESTS"
    read -r -d '' -a tests <<< "$spec" || true
    TFLITE_HOTSWAP_BACKEND="$backend" run /bin/sh -c 'cd /work/src && exec "$@"' sh \
        "/opt/venv-$backend/bin/pytest" -p no:cacheprovider "${PYTEST_ARGS[@]}" "${tests[@]}"
}

if [ "$ARCH" = armv6 ]; then
    armv6_check
    say "wall times (s): $(for k in "${!TIMES[@]}"; do printf '%s=%s; ' "$k" "${TIMES[$k]}"; done)total=$((SECONDS - START))"
    exit 0
fi
timed "host tools" host_tools
timed "debootstrap" make_root
say "root: $(run /usr/bin/python3 -c 'import platform, sys; print(platform.machine(), sys.version.split()[0])'), $(run /usr/bin/gcc -dumpfullversion) gcc"
timed "sdist" make_sdist
timed "wheel" make_wheel
status=0
for backend in "${BACKENDS[@]}"; do
    timed "venv $backend" make_venv "$backend"
    say "tests, backend $backend: ${ARM_TESTS:-tests} ${PYTEST_ARGS[*]}"
    t0=$SECONDS
    if run_tests "$backend"; then result=passed; else result="FAILED"; status=1; fi
    TIMES["tests $backend"]=$((SECONDS - t0))
    say "tests, backend $backend: $result in $((SECONDS - t0)) s"
done
say "wall times (s): $(for k in "${!TIMES[@]}"; do printf '%s=%s; ' "$k" "${TIMES[$k]}"; done)total=$((SECONDS - START))"
exit $status
