"""Find a backend's C++ functions in its already-loaded libraries: exported, or hidden in ``.symtab``.

tflite-runtime exports ``tflite::impl::Interpreter``'s methods from its
extension module, so ``dlsym`` finds them.  ai-edge-litert (and TensorFlow)
link the same interpreter into a library of their own with hidden
visibility: nothing is exported, but the file keeps its full symbol table
(``.symtab``, not stripped), and a hidden function's address is the library's
load bias plus its value there.  A hidden function is used only after the
native self-test has run it in a throwaway process
(:mod:`tflite_hotswap.serving.native`), since nothing but the symbol table
vouches for it.

The table is read with numpy from the library's file, and each function's
first bytes in memory must equal its bytes in that same open file: a backend
upgraded on disk under a running process, or a table that does not describe
the loaded code, gives nothing (whatever the filesystem reports as inodes).
Only the module itself and the libraries it needs from its own directory are
searched, so an unrelated copy of the same code elsewhere in the process is
never picked.
"""

from __future__ import annotations

import ctypes
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
_SHN_LORESERVE = 0xFF00  # section indices from here on are special (ABS, COMMON, XINDEX)
_COMPARED_BYTES = 32  # of each function, memory against file
_READ_ERRORS = (OSError, ValueError, struct.error, UnicodeDecodeError, MemoryError, OverflowError)


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
    try:
        libraries = [module_file, *_needed_beside(module_file)]
    except _READ_ERRORS as e:
        logger.info("cannot read the libraries %s needs: %s", module_file, e)
        libraries = [module_file]
    for library in libraries:
        try:
            hidden = _hidden_functions(library, names)
        except _READ_ERRORS as e:
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
                    name = os.fsdecode(strings[value:strings.index(b"\0", value)])
                    path = os.path.join(directory, name)
                    if "/" not in name and os.path.exists(path):
                        needed.append(path)
    return needed


def _hidden_functions(library: str, names: Sequence[bytes], file: str | None = None) -> tuple[int, ...] | None:
    """Addresses of ``names`` from the .symtab of ``file`` (default: ``library``), which is loaded.

    A name counts only if its function's first bytes in memory equal those
    in the file; None when the library is not loaded or has no .symtab.
    """
    bias = _slots.load_bias(library)
    if not bias:
        return None
    with open(file or library, "rb") as f:
        elf = _Elf(f)
        symtabs = elf.sections(_SHT_SYMTAB)
        if not symtabs:
            return None
        symbols = elf.array(symtabs[0], elf.symbol)
        strings = elf.read(symtabs[0].link)
        shndx = symbols["shndx"]
        functions = symbols[((symbols["info"] & 0xF) == _STT_FUNC) & (shndx > 0) & (shndx < _SHN_LORESERVE)]
        addresses = []
        for name in names:
            # The linker may merge a name into the tail of a longer one: every
            # place the name ends a string is a candidate.
            offsets, at = [], strings.find(name + b"\0")
            while at >= 0:
                offsets.append(at)
                at = strings.find(name + b"\0", at + 1)
            matches = functions[np.isin(functions["name"], offsets)]
            address = 0
            if len(matches) == 1:
                value, section = int(matches["value"][0]), int(matches["shndx"][0])
                if _same_code(elf, section, value, bias, library):
                    address = bias + value
            addresses.append(address)
    return tuple(addresses)


def _same_code(elf: _Elf, section_index: int, value: int, bias: int, library: str) -> bool:
    """Whether the function at ``value`` in the file is what ``library`` has in memory there."""
    start = value & ~1  # a Thumb function's value has bit 0 set; its code starts one byte lower
    section = elf.section(section_index)
    if not section.addr <= start < section.addr + section.size:
        return False
    length = min(_COMPARED_BYTES, section.addr + section.size - start)
    in_file = elf.read_at(section.offset + start - section.addr, length)
    owner = _slots.owner_of(bias + start)
    if owner is None or os.path.realpath(owner) != os.path.realpath(library):
        return False  # the address is not inside the library at all
    return ctypes.string_at(bias + start, length) == in_file


@dataclass(frozen=True)
class _Section:
    type: int
    addr: int
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
        self._file_size = os.fstat(file.fileno()).st_size
        table = self.read_at(shoff, shnum * shentsize)
        self._sections = []
        for i in range(shnum):
            _, kind, _, addr, offset, size, link, _ = struct.unpack_from(fields, table, i * shentsize)
            self._sections.append(_Section(kind, addr, offset, size, link))

    def sections(self, kind: int) -> list[_Section]:
        return [s for s in self._sections if s.type == kind]

    def section(self, index: int) -> _Section:
        if not 0 <= index < len(self._sections):
            raise ValueError(f"section index {index} out of range")
        return self._sections[index]

    def read(self, section: _Section | int) -> bytes:
        """The bytes of a section (or of the section at that index)."""
        if isinstance(section, int):
            section = self.section(section)
        return self.read_at(section.offset, section.size)

    def read_at(self, offset: int, size: int) -> bytes:
        """``size`` bytes at ``offset``, all inside the file (checked before anything is read)."""
        if offset < 0 or size < 0 or offset + size > self._file_size:
            raise ValueError(f"{size} bytes at offset {offset} run past the end of the file "
                             f"({self._file_size} bytes)")
        self._file.seek(offset)
        data = self._file.read(size)
        if len(data) != size:
            raise ValueError("the file shrank while it was read")
        return data

    def array(self, section: _Section, dtype: np.dtype[Any]) -> np.ndarray[Any, Any]:
        return np.frombuffer(self.read(section), dtype=dtype, count=section.size // dtype.itemsize)
