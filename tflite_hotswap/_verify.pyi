"""Typed stubs for the model verifier's walk (pyx/tflite_hotswap/_verify.pyx)."""

from typing import Any

FIELD_COLUMNS: int
MAX_DEPTH: int
MAX_TABLES: int
MAX_BUFFER: int
REFERENCE_READS_PER_BYTE: int
OUTSIDE: int
MISALIGNED: int
OFFSET: int
CLAIMS: int
NO_NUL: int
TARGET: int
TOO_MANY: int
VTABLE_SIZE: int
EXTERNAL: int
NO_MEMORY: int
REFERENCE: int
SHARED: int

class Schema:
    """The TFLite layout as the walk reads it (compiled by tflite_hotswap.safety.verify)."""
    def __init__(self, fields: bytes, table_first: bytes, union_first: bytes, union_members: bytes,
                 ids: dict[str, Any]) -> None:
        """Raises:
            ValueError: if the arrays disagree in size or an index names nothing.
            TypeError: if the schema is already made.
        """

def verify(data: bytes, schema: Schema) -> int | tuple[int, ...]:
    """Walk ``data`` with the GIL released: the number of tables walked, or the first fault.

    Raises:
        TypeError: if ``data`` is not ``bytes``.
        ValueError: if ``schema`` was never made.
    """
