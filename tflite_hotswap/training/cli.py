"""``tflite-hotswap make-trainable`` and ``tflite-hotswap train``."""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any, Callable

import numpy as np

from ..errors import MisuseError


def add_commands(sub: Any) -> None:
    """Add the training subcommands to the main parser's subparsers."""
    m = sub.add_parser("make-trainable", help="build a builtin-only trainable .tflite (needs TensorFlow)")
    m.add_argument("saved_model", metavar="SAVED_MODEL",
                   help="a Keras model file (.keras, .h5) or a SavedModel folder of a tf.Module")
    m.add_argument("output", metavar="OUT.tflite")
    m.add_argument("--input-shape", required=True, help="one sample's shape, e.g. 28,28 or 16")
    m.add_argument("--batch-size", type=int, default=32, help="the fixed training batch size (default 32)")
    m.add_argument("--loss", default="sparse_categorical_crossentropy",
                   choices=["sparse_categorical_crossentropy", "categorical_crossentropy", "mse"])
    m.add_argument("--optimizer", default="sgd", choices=["sgd", "adam"])
    m.add_argument("--learning-rate", type=float, default=0.01)
    m.add_argument("--momentum", type=float, default=0.0)

    t = sub.add_parser("train", help="train a model on an .npz of x and y arrays, saving a checkpoint")
    t.add_argument("model", metavar="MODEL.tflite")
    t.add_argument("data", metavar="DATA.npz", help="arrays x (features) and y (labels); "
                   "optional x_val and y_val for validation")
    t.add_argument("--epochs", type=int, default=1)
    t.add_argument("--checkpoints", required=True, metavar="DIR")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--last", choices=["drop", "pad"], default="drop", help="the last partial batch")
    t.add_argument("--backend", default="auto")


def run(args: argparse.Namespace) -> int:
    """Run the subcommand in ``args``; return the exit status.

    Raises:
        HotswapError: for any library error (the main CLI prints it).
    """
    if args.command == "make-trainable":
        return _make_trainable(args)
    return _train(args)


def _make_trainable(args: argparse.Namespace) -> int:
    from .make import _tensorflow, make_trainable
    tf = _tensorflow()
    try:
        shape = tuple(int(d) for d in args.input_shape.split(","))
    except ValueError as e:
        raise MisuseError(f"--input-shape: expected comma-separated ints, got {args.input_shape!r}") from e
    path = args.saved_model
    if os.path.isfile(path):
        model = tf.keras.models.load_model(path)
    else:
        model = tf.saved_model.load(path)
    data = make_trainable(model, args.loss, args.optimizer, input_shape=shape, batch_size=args.batch_size,
                          learning_rate=args.learning_rate, momentum=args.momentum, output=args.output)
    print(f"{args.output}: {len(data)} bytes, signatures train/infer/get_weights/set_weights, "
          f"training batch {args.batch_size}")
    return 0


def _train(args: argparse.Namespace) -> int:
    from .checkpoints import Checkpoints
    from .data import count_batches
    from .trainer import Trainer
    try:
        arrays = np.load(args.data)
        x, y = arrays["x"], arrays["y"]
    except (OSError, KeyError, ValueError) as e:
        raise MisuseError(f"DATA: expected an .npz with arrays x and y, got {args.data!r} ({e})") from e
    validation = (arrays["x_val"], arrays["y_val"]) if "x_val" in arrays and "y_val" in arrays else None
    ckpts = Checkpoints(args.checkpoints)
    with Trainer(args.model, checkpoints=ckpts, backend=args.backend) as tr:
        if tr.restored is not None:
            print(f"resuming from checkpoint {tr.restored.id} (step {tr.restored.step})")
        total = count_batches(len(x), tr.batch_size or len(x), args.last)
        bar = _bar(total, args.epochs)
        history = tr.fit((x, y), epochs=args.epochs, validation=validation, seed=args.seed, last=args.last,
                         progress=bar, callbacks=[_epoch_line])
        metrics = {k: v for k, v in history.epochs[-1].items() if k.startswith("val_")}
        ckpt_id = tr.save(metrics=metrics)
    print(f"saved checkpoint {ckpt_id} in {ckpts.directory}")
    return 0


def _bar(total: int, epochs: int) -> Callable[[int, int], None]:
    """A progress bar on stderr, redrawn at most every 0.1 s."""
    last = [0.0]

    def draw(epoch: int, done: int) -> None:
        now = time.monotonic()
        if now - last[0] < 0.1 and done < total:
            return
        last[0] = now
        width = 30
        filled = width * done // max(total, 1)
        sys.stderr.write(f"\repoch {epoch + 1}/{epochs} [{'#' * filled}{'.' * (width - filled)}] "
                         f"{done}/{total} steps")
        sys.stderr.flush()
    return draw


def _epoch_line(epoch: int, logs: dict[str, float]) -> None:
    sys.stderr.write("\n")
    print(f"epoch {epoch + 1}: " + ", ".join(f"{k} {v:.4g}" for k, v in logs.items()), flush=True)
