"""Type aliases shared by the stubs and the Python layer."""

from typing import Any

# Anything exposing the buffer protocol (numpy arrays, memoryview, bytes...).
# typing has no name for it before Python 3.12's collections.abc.Buffer.
Buffer = Any
