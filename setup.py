"""Build the four Cython extensions (slot table, buffer kernels, training step, model verifier).

Portable flags only: no -march=native.  Set TFLITE_HOTSWAP_CPU_FLAGS (for
example "-mcpu=native" or "-mcpu=cortex-a72") to tune for one CPU.

64-bit atomics: the slot table's statistics are uint64_t counters updated with
__atomic builtins.  Most targets (x86_64, aarch64, armv7-a) inline them; gcc
for armv6 (32-bit Raspberry Pi OS) turns them into calls to __atomic_*_8 in
libatomic, and an extension linked without -latomic then fails at import with
"undefined symbol: __atomic_fetch_add_8".  A shared object links fine with
undefined symbols, so the build compiles and links a small *program* with the
same compiler and flags: if it links only with -latomic, the extensions get
-latomic (set TFLITE_HOTSWAP_LIBATOMIC=1 or 0 to force either way).
"""

import contextlib
import os
import shlex
import sys
import tempfile

from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

# -ffp-contract=off: no fused multiply-add, so the kernels round exactly like
# the numpy reference on every CPU (gcc contracts by default on aarch64).
COMPILE_ARGS = ["-O3", "-ffp-contract=off", "-fno-strict-aliasing"]
COMPILE_ARGS += shlex.split(os.environ.get("TFLITE_HOTSWAP_CPU_FLAGS", ""))

# The operations and widths the extensions use (see HS_* in _slots.pyx).
ATOMICS_PROBE = r"""
#include <stdint.h>
static uint64_t counter;
static long word;
int main(void) {
    uint64_t expected = __atomic_load_n(&counter, __ATOMIC_RELAXED);
    __atomic_add_fetch(&counter, 1, __ATOMIC_RELAXED);
    __atomic_compare_exchange_n(&counter, &expected, 2, 1, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
    __atomic_store_n(&counter, 3, __ATOMIC_RELEASE);
    __atomic_exchange_n(&word, 1L, __ATOMIC_SEQ_CST);
    __atomic_add_fetch(&word, 1L, __ATOMIC_SEQ_CST);
    return (int)(__atomic_load_n(&counter, __ATOMIC_SEQ_CST) + __atomic_load_n(&word, __ATOMIC_SEQ_CST));
}
"""


@contextlib.contextmanager
def _quiet():
    """Silence the compiler's own output: a failing probe is an answer, not an error."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved + [devnull]:
            os.close(fd)


def _links(compiler, libraries):
    """Whether the atomics probe compiles and links into a program."""
    with tempfile.TemporaryDirectory() as tmp, _quiet():
        source = os.path.join(tmp, "atomics_probe.c")
        with open(source, "w") as f:
            f.write(ATOMICS_PROBE)
        try:
            objects = compiler.compile([source], output_dir=tmp, extra_postargs=COMPILE_ARGS)
            # LDFLAGS too: setuptools gives them to shared objects only, and
            # flags such as -fsanitize=address are needed at both steps.
            compiler.link_executable(objects, "atomics_probe", output_dir=tmp, libraries=libraries,
                                     extra_postargs=COMPILE_ARGS + shlex.split(os.environ.get("LDFLAGS", "")))
        except Exception:  # CompileError / LinkError, whichever distutils provides
            return False
    return True


def needs_libatomic(compiler):
    forced = os.environ.get("TFLITE_HOTSWAP_LIBATOMIC")
    if forced in ("0", "1"):
        return forced == "1"
    if _links(compiler, []):
        return False
    if _links(compiler, ["atomic"]):
        return True
    raise SystemExit(
        "tflite_hotswap: the compiler cannot link 64-bit __atomic operations, not even "
        "with -latomic. Install libatomic (Debian: apt install libatomic1 and the "
        "gcc package), or set TFLITE_HOTSWAP_LIBATOMIC=1 to link it anyway.")


class BuildExt(build_ext):
    def build_extensions(self):
        if needs_libatomic(self.compiler):
            print("tflite_hotswap: 64-bit atomics need libatomic here: linking -latomic")
            for ext in self.extensions:
                if "atomic" not in ext.libraries:
                    ext.libraries.append("atomic")
        super().build_extensions()


extensions = [
    Extension(f"tflite_hotswap.{name}", [f"pyx/tflite_hotswap/{name}.pyx"],
              extra_compile_args=COMPILE_ARGS)
    for name in ("_buffers", "_slots", "_train", "_verify")
]

setup(
    cmdclass={"build_ext": BuildExt},
    ext_modules=cythonize(extensions, include_path=["pyx"], language_level=3,
                          compiler_directives={"embedsignature": True}),
)
