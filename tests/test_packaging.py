"""Packaging: a copy of the package without its compiled extensions says what to do.

From a repository checkout, ``import tflite_hotswap`` finds the source folder
first; without an in-place build (``pip install -e .``) it has no extensions.
The sdist, fresh-venv and editable-install checks themselves are in tools/test.sh.
"""

from __future__ import annotations

import pathlib
import shutil
import subprocess
import sys

import tflite_hotswap


def _import_from(tree: pathlib.Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "import tflite_hotswap"], cwd=tree,
                          capture_output=True, text=True, timeout=120)


def _copy_without_extensions(tree: pathlib.Path) -> None:
    installed = pathlib.Path(tflite_hotswap.__file__).parent
    shutil.copytree(installed, tree / "tflite_hotswap",
                    ignore=shutil.ignore_patterns("*.so", "*.pyd", "__pycache__"))


def test_source_tree_without_built_extensions_says_pip_install_e(tmp_path):
    _copy_without_extensions(tmp_path)
    (tmp_path / "pyx" / "tflite_hotswap").mkdir(parents=True)
    (tmp_path / "pyx" / "tflite_hotswap" / "_slots.pyx").write_text("# a checkout\n")
    result = _import_from(tmp_path)
    assert result.returncode != 0
    assert "ImportError: tflite_hotswap is being imported from its source tree" in result.stderr
    assert "pip install -e ." in result.stderr


def test_installation_without_extensions_says_reinstall(tmp_path):
    _copy_without_extensions(tmp_path)
    result = _import_from(tmp_path)
    assert result.returncode != 0
    assert "lacks its compiled extensions" in result.stderr
    assert "reinstall" in result.stderr


def test_installed_package_has_its_extensions():
    result = _import_from(pathlib.Path(tflite_hotswap.__file__).parent.parent)
    assert result.returncode == 0, result.stderr
