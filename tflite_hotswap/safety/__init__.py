"""Safety: the structural flatbuffer verifier and the isolation probe."""
