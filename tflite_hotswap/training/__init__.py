"""On-device training: train while serving, crash-safe checkpoints, personalised weights swapped in.

* :class:`Trainer` runs a model's ``train`` signature on its own interpreter
  (``step``, ``fit``), saves checkpoints and ``publish``-es validated weights
  into a serving :class:`~tflite_hotswap.Runtime`.
* :class:`Checkpoints` is the on-device store (safetensors files, atomic,
  per base model); a ``Runtime(..., checkpoints=ckpts)`` restores the latest
  one into every interpreter it creates.
* :func:`make_trainable` builds a builtin-only trainable model from a
  ``tf.Module`` or Keras model; it needs TensorFlow, nothing else here does.
"""

from .checkpoints import CheckpointInfo, Checkpoints
from .data import batches, count_batches, one_hot
from .forms import Form, SignatureNames, flex_ops
from .make import make_trainable
from .trainer import History, PublishInfo, Trainer

__all__ = ["CheckpointInfo", "Checkpoints", "Form", "History", "PublishInfo", "SignatureNames", "Trainer",
           "batches", "count_batches", "flex_ops", "make_trainable", "one_hot"]
