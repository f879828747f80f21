"""Child process of ``isolation``: load a model from stdin and run it once.

Usage: ``python -m tflite_hotswap._probe BACKEND SIGNATURE NUM_THREADS < model``.
Exit status 0: the model loads and runs.  3: it was refused with an
exception (message on stderr).  A crash shows as death by signal.
"""

import sys


def main() -> int:
    backend_name, signature, num_threads = sys.argv[1], sys.argv[2] or None, int(sys.argv[3]) or None
    data = sys.stdin.buffer.read()
    try:
        from .backend import load_backend
        from .loader import inspect_model, make_bound

        backend = load_backend(backend_name)
        interpreter, model = inspect_model(backend, data, "", num_threads, signature)
        bound = make_bound(backend, model, num_threads, [None] * len(model.contract.inputs),
                           interpreter=interpreter)
        bound.warm_up()
    except Exception as e:  # the verdict, whatever was raised
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
