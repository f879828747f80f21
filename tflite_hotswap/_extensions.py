"""The compiled extensions, imported first so that a missing build says what to do.

From a source checkout, ``import tflite_hotswap`` finds this folder before any
installed copy, and here the extensions exist only after an in-place build
(``pip install -e .``).  Without this module the error would be a bare
``No module named 'tflite_hotswap._slots'`` from deep inside the package.
"""

from __future__ import annotations

import importlib
import pathlib

_HERE = pathlib.Path(__file__).resolve().parent

try:
    for _name in ("_buffers", "_slots", "_train", "_verify"):
        importlib.import_module(f"{__package__}.{_name}")
except ImportError as error:
    missing = isinstance(error, ModuleNotFoundError) and error.name in (
        f"{__package__}._buffers", f"{__package__}._slots", f"{__package__}._train", f"{__package__}._verify")
    if missing and (_HERE.parent / "pyx" / "tflite_hotswap" / "_slots.pyx").exists():
        message = (
            f"tflite_hotswap is being imported from its source tree ({_HERE}), whose compiled "
            f"extensions are not built ({error}). For development, build them in place with "
            "`pip install -e .` in the repository root (README: Development); to use an "
            "installed tflite_hotswap instead, run Python from another directory.")
    elif missing:
        message = (f"this tflite_hotswap installation ({_HERE}) lacks its compiled extensions "
                   f"({error}): reinstall it with pip.")
    elif "__atomic" in str(error):
        message = (f"the compiled extension needs libatomic but was linked without it ({error}): "
                   "rebuild it (pip install --no-binary tflite_hotswap --force-reinstall "
                   "tflite_hotswap); the build links -latomic when the compiler needs it, "
                   "TFLITE_HOTSWAP_LIBATOMIC=1 forces it.")
    else:
        raise
    raise ImportError(message) from error
