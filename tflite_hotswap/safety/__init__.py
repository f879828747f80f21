"""Safety layer: flatbuffer verifier, cross-reference checks, isolation probe.

Lower than ``serving``: nothing here imports it.  Modules log to loggers under
``tflite_hotswap.safety``; the application configures where they go.
"""

import logging

# A library does not decide where its log goes: without this, Python's last
# resort handler would print warnings to stderr.
logging.getLogger(__name__).addHandler(logging.NullHandler())
