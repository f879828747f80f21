"""Build the two Cython extensions (slot table, buffer kernels).

Portable flags only: no -march=native.  Set TFLITE_HOTSWAP_CPU_FLAGS (for
example "-mcpu=native" or "-mcpu=cortex-a72") to tune for one CPU.
"""

import os
import shlex

from Cython.Build import cythonize
from setuptools import Extension, setup

# -ffp-contract=off: no fused multiply-add, so the kernels round exactly like
# the numpy reference on every CPU (gcc contracts by default on aarch64).
COMPILE_ARGS = ["-O3", "-ffp-contract=off", "-fno-strict-aliasing"]
COMPILE_ARGS += shlex.split(os.environ.get("TFLITE_HOTSWAP_CPU_FLAGS", ""))

extensions = [
    Extension(f"tflite_hotswap.{name}", [f"pyx/tflite_hotswap/{name}.pyx"],
              extra_compile_args=COMPILE_ARGS)
    for name in ("_buffers", "_slots")
]

setup(
    ext_modules=cythonize(extensions, include_path=["pyx"], language_level=3,
                          compiler_directives={"embedsignature": True}),
)
