"""The training input pipeline: one-hot labels, seeded shuffling, fixed-size batches.

Features reach the ``train`` tensor through the same fused kernels as
inference (a :class:`~tflite_hotswap.Normalize` given to the
:class:`~tflite_hotswap.training.Trainer` converts raw uint8 features in the
copy into tensor memory), so the pipeline here only picks rows.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from ..errors import InputError, MisuseError

LAST_BATCH = ("drop", "pad")


def one_hot(labels: Any, num_classes: int, dtype: Any = np.float32) -> np.ndarray:
    """One-hot encode integer class labels.

    Args:
        labels: integer labels, any shape.
        num_classes: the number of classes.
        dtype: the result's dtype.

    Returns:
        An array of shape ``labels.shape + (num_classes,)``.

    Raises:
        InputError: if a label is not an integer in ``[0, num_classes)``.
    """
    labels = np.asarray(labels)
    if labels.dtype.kind not in "iu":
        raise InputError(f"labels: expected integers, got {labels.dtype}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise InputError(f"labels: expected values in [0, {num_classes}), "
                         f"got [{labels.min()}, {labels.max()}]")
    out = np.zeros((*labels.shape, num_classes), dtype=dtype)
    np.put_along_axis(out, labels[..., None].astype(np.intp), 1, axis=-1)
    return out


def batches(arrays: Sequence[np.ndarray], batch_size: int, *, shuffle: bool = True, seed: int | None = 0,
            last: str = "drop") -> Iterator[tuple[np.ndarray, ...]]:
    """Cut same-length arrays into batches of exactly ``batch_size`` rows.

    The training signature has a fixed batch size, so every batch has it:
    the last, partial batch is dropped (``last="drop"``, the default: its rows
    come first in another epoch's order when shuffling), or padded with rows
    from the start of this epoch's order (``last="pad"``: those rows count
    twice in this epoch).  An epoch shorter than one batch is padded by
    repeating its rows, whatever ``last`` says.

    The arrays yielded are reused for the next batch: copy them to keep them
    (the trainer copies them into tensor memory at once).

    Args:
        arrays: e.g. ``(features, labels)``; the first axis is the sample axis.
        batch_size: rows per batch.
        shuffle: shuffle the rows, with ``seed``.
        seed: the shuffle's seed (None: a fresh one).
        last: ``"drop"`` or ``"pad"``.

    Raises:
        MisuseError: for a bad ``batch_size`` or ``last``.
        InputError: if the arrays differ in length or are empty.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise MisuseError(f"batch_size: expected an int >= 1, got {batch_size!r}")
    if last not in LAST_BATCH:
        raise MisuseError(f"last: expected one of {LAST_BATCH}, got {last!r}")
    arrays = [np.asarray(a) for a in arrays]
    n = len(arrays[0]) if arrays else 0
    if not arrays or n == 0 or any(len(a) != n for a in arrays):
        raise InputError(f"arrays: expected non-empty arrays of one length, "
                         f"got lengths {[len(a) for a in arrays]}")
    order = np.random.default_rng(seed).permutation(n) if shuffle else np.arange(n)
    if n < batch_size:
        order = np.resize(order, batch_size)
    elif n % batch_size and last == "pad":
        order = np.concatenate([order, order[: batch_size - n % batch_size]])
    buffers = [np.empty((batch_size, *a.shape[1:]), a.dtype) for a in arrays]
    for start in range(0, len(order) - batch_size + 1, batch_size):
        rows = order[start:start + batch_size]
        for a, buffer in zip(arrays, buffers):
            np.take(a, rows, axis=0, out=buffer)
        yield tuple(buffers)


def count_batches(n: int, batch_size: int, last: str = "drop") -> int:
    """How many batches :func:`batches` yields for ``n`` rows."""
    if n < batch_size:
        return 1 if n else 0
    return n // batch_size + (1 if n % batch_size and last == "pad" else 0)
