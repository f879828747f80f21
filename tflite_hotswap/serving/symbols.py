"""Find a backend's C++ functions in its already-loaded libraries: exported, or hidden in ``.symtab``.

tflite-runtime exports ``tflite::impl::Interpreter``'s methods from its
extension module, so ``dlsym`` finds them.  ai-edge-litert links the same
interpreter into ``libpywrap_litert_common.so`` with hidden visibility: nothing
is exported, but the file keeps its full symbol table (``.symtab``, not
stripped), and a hidden function's address is the library's load bias plus
its value there.  The functions are called like exported ones; a hidden one
is used only after the native self-test has run it in a throwaway process
(:mod:`tflite_hotswap.serving.native`), since nothing but the symbol table
vouches for it.

The symbol table is read with numpy from the file the process has mapped
(checked by device and inode: a backend upgraded on disk under a running
process must not lend its new addresses to the old code).  Only the module
itself and the libraries it needs from its own directory are searched, so an
unrelated copy of the same code elsewhere in the process is never picked.
"""

from __future__ import annotations

import logging
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np

from .. import _slots

logger = logging.getLogger(__name__)

_SHT_SYMTAB, _SHT_DYNAMIC = 2, 6
_DT_NEEDED = 1
_STT_FUNC = 2
_SHN_UNDEF = 0


@dataclass(frozen=True)
class Found:
    """Addresses of the names asked for (0: not found), and where they were found."""

    addresses: tuple[int, ...]
    library: str
    hidden: bool  # from .symtab, not exported: see the module docstring


def find_functions(module_file: str, names: Sequence[bytes], required: int) -> Found | None:
    """Find ``names`` in ``module_file`` or the libraries it needs from its directory.

    The first ``required`` names must all be found in one library; the rest
    are optional (0 when missing).  Exported symbols (``dlsym``) are preferred
    over hidden ones.  Returns None when no library has the required names.
    """
    exported = tuple(_slots.resolve_symbol(module_file, name) for name in names)
    if all(exported[:required]):
        return Found(exported, module_file, hidden=False)
    for library in (module_file, *_needed_beside(module_file)):
        try:
            hidden = _hidden_functions(library, names)
        except (OSError, ValueError, struct.error) as e:
            logger.info("cannot read the symbol table of %s: %s", library, e)
            continue
        if hidden is not None and all(hidden[:required]):
            return Found(hidden, library, hidden=True)
    return None


def _needed_beside(module_file: str) -> list[str]:
    """The DT_NEEDED libraries of ``module_file`` that sit in its own directory."""
    directory = os.path.dirname(module_file)
    needed = []
    with open(module_file, "rb") as f:
        elf = _Elf(f)
        for section in elf.sections(_SHT_DYNAMIC):
            strings = elf.read(section.link)
            for tag, value in elf.array(section, elf.word_pair):
                if tag == _DT_NEEDED:
                    path = os.path.join(directory, strings[value:strings.index(b"\0", value)].decode())
                    if os.path.exists(path):
                        needed.append(path)
    return needed


def _hidden_functions(library: str, names: Sequence[bytes]) -> tuple[int, ...] | None:
    """Addresses of ``names`` from ``library``'s .symtab, or None if it is not the mapped file."""
    bias = _slots.load_bias(library)
    if not bias or not _is_mapped_file(library):
        return None
    with open(library, "rb") as f:
        elf = _Elf(f)
        symtabs = elf.sections(_SHT_SYMTAB)
        if not symtabs:
            return None
        symbols = elf.array(symtabs[0], elf.symbol)
        strings = elf.read(symtabs[0].link)
    functions = symbols[((symbols["info"] & 0xF) == _STT_FUNC) & (symbols["shndx"] != _SHN_UNDEF)]
    addresses = []
    for name in names:
        # The linker may merge a name into the tail of a longer one: every
        # place the name ends a string is a candidate.
        offsets, at = [], strings.find(name + b"\0")
        while at >= 0:
            offsets.append(at)
            at = strings.find(name + b"\0", at + 1)
        matches = functions[np.isin(functions["name"], offsets)]
        address = bias + int(matches["value"][0]) if len(matches) == 1 else 0
        if address and _slots.owner_of(address) is not None and \
                os.path.realpath(str(_slots.owner_of(address))) != os.path.realpath(library):
            address = 0  # the table does not describe the code at that address
        addresses.append(address)
    return tuple(addresses)


def _is_mapped_file(library: str) -> bool:
    """Whether ``library`` on disk is the file the process has mapped (same device and inode)."""
    real = os.path.realpath(library)
    stat = os.stat(real)
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                fields = line.split(maxsplit=5)
                if len(fields) == 6 and fields[5].rstrip("\n") == real:
                    major, minor = (int(x, 16) for x in fields[3].split(":"))
                    return (int(fields[4]), major, minor) == \
                        (stat.st_ino, os.major(stat.st_dev), os.minor(stat.st_dev))
    except OSError:
        return False
    return False


@dataclass(frozen=True)
class _Section:
    type: int
    offset: int
    size: int
    link: int


class _Elf:
    """Just enough of an ELF file: its sections, read on demand (a backend's library can be huge)."""

    def __init__(self, file: BinaryIO) -> None:
        self._file = file
        head = file.read(64)
        if len(head) < 52 or head[:4] != b"\x7fELF" or head[4] not in (1, 2) or head[5] not in (1, 2):
            raise ValueError("not an ELF file")
        wide, order = head[4] == 2, "<" if head[5] == 1 else ">"
        address = order + ("u8" if wide else "u4")
        if wide:
            self.symbol = np.dtype([("name", order + "u4"), ("info", "u1"), ("other", "u1"),
                                    ("shndx", order + "u2"), ("value", address), ("size", address)])
            shoff, shentsize, shnum = struct.unpack_from(order + "Q10xHH", head, 0x28)
            fields = order + "IIQQQQII"
        else:
            self.symbol = np.dtype([("name", order + "u4"), ("value", address), ("size", address),
                                    ("info", "u1"), ("other", "u1"), ("shndx", order + "u2")])
            shoff, shentsize, shnum = struct.unpack_from(order + "I10xHH", head, 0x20)
            fields = order + "IIIIIIII"
        self.word_pair = np.dtype([("tag", address), ("value", address)])
        file.seek(shoff)
        table = file.read(shnum * shentsize)
        self._sections = []
        for i in range(shnum):
            _, kind, _, _, offset, size, link, _ = struct.unpack_from(fields, table, i * shentsize)
            self._sections.append(_Section(kind, offset, size, link))

    def sections(self, kind: int) -> list[_Section]:
        return [s for s in self._sections if s.type == kind]

    def read(self, section: _Section | int) -> bytes:
        """The bytes of a section (or of the section at that index)."""
        if isinstance(section, int):
            if not 0 <= section < len(self._sections):
                raise ValueError(f"section index {section} out of range")
            section = self._sections[section]
        self._file.seek(section.offset)
        data = self._file.read(section.size)
        if len(data) != section.size:
            raise ValueError("a section runs past the end of the file")
        return data

    def array(self, section: _Section, dtype: np.dtype[Any]) -> np.ndarray[Any, Any]:
        return np.frombuffer(self.read(section), dtype=dtype, count=section.size // dtype.itemsize)
