"""Training: Trainer.step beside the raw SignatureRunner train call; loop latency while training.

* ``train-step``: one ``train`` call on the same model, through
  ``Trainer.step``, through the backend's ``SignatureRunner``, and the bare
  invoke of the train subgraph (inputs already set: the floor).  Target:
  >= 1.5x the steps per second of the SignatureRunner.  Two models:
  ``trainable_mlp`` (8 -> 16 -> 3, Adam, batch 16; a bare train invoke of
  ~16 us, where the runner's own overhead of ~4.5 us caps any ratio near
  1.3x) and ``trainable_linear`` (a classifier head, 8 -> 3, SGD, batch 16;
  a ~6 us invoke).  ``train-step-in-turns`` times the three in turns within
  one benchmark (robust to load drifting between benchmarks on a shared
  machine) and reports the ratio in extra_info.
* ``loop-while-training``: a thread calls ``Runtime.run`` on the bundled
  demo classifier for a few seconds and times every call, with no training,
  with a ``Trainer.fit`` running in a background thread of the same process,
  and with one running in a background process.  Reported in extra_info:
  calls, failed calls (must be 0), p50/p99/p99.9/max latency, steps trained.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import pytest
from conftest import model_path, raw_interpreter

from tflite_hotswap import HotswapError, Runtime
from tflite_hotswap.demo.training import bundled_model, synthetic
from tflite_hotswap.training import Trainer

SECONDS = 3.0
X = np.random.default_rng(0).normal(size=(16, 8)).astype(np.float32)
Y = (np.arange(16) % 3).astype(np.int32)


TRAIN_MODELS = ["trainable_mlp", "trainable_linear"]


@pytest.mark.parametrize("model", TRAIN_MODELS)
def test_raw_signature_runner_train(benchmark, model):
    benchmark.group = f"train-step {model}"
    interpreter = raw_interpreter(model)
    runner = interpreter.get_signature_runner("train")
    benchmark(runner, x=X, y=Y)


@pytest.mark.parametrize("model", TRAIN_MODELS)
def test_raw_bare_train_invoke(benchmark, model):
    """The floor: the train subgraph's invoke alone, inputs already set."""
    benchmark.group = f"train-step {model}"
    interpreter = raw_interpreter(model)
    runner = interpreter.get_signature_runner("train")
    runner(x=X, y=Y)  # allocates and sets the inputs
    wrapper = interpreter._interpreter
    subgraph = wrapper.GetSubgraphIndexFromSignature("train")
    benchmark(wrapper.Invoke, subgraph)


@pytest.mark.parametrize("model", TRAIN_MODELS)
def test_trainer_step(benchmark, model):
    benchmark.group = f"train-step {model}"
    with Trainer(model_path(model)) as tr:
        benchmark.extra_info["path"] = tr.path
        benchmark(tr.step, X, Y)


def _in_turns(model: str, rounds: int = 40, calls: int = 250) -> dict:
    """Trainer.step, the SignatureRunner call and the bare invoke, timed in turns.

    Separate benchmarks run one after another, and on a shared machine the load
    drifts between them by more than the differences measured here; in turns,
    each round times ``calls`` calls of each variant back to back (in a
    rotating order), and the medians of the rounds' means are compared.
    """
    interpreter = raw_interpreter(model)
    runner = interpreter.get_signature_runner("train")
    runner(x=X, y=Y)
    wrapper = interpreter._interpreter
    subgraph = wrapper.GetSubgraphIndexFromSignature("train")
    with Trainer(model_path(model)) as tr:
        variants = {"step": lambda: tr.step(X, Y), "runner": lambda: runner(x=X, y=Y),
                    "bare": lambda: wrapper.Invoke(subgraph)}
        means: dict[str, list[float]] = {k: [] for k in variants}
        names = list(variants)
        for r in range(rounds):
            for name in names[r % 3:] + names[:r % 3]:
                call = variants[name]
                t0 = time.perf_counter_ns()
                for _ in range(calls):
                    call()
                means[name].append((time.perf_counter_ns() - t0) / calls / 1e3)
        path = tr.path
    m = {k: float(np.median(v)) for k, v in means.items()}
    return {"path": path, "step_us": round(m["step"], 2), "runner_us": round(m["runner"], 2),
            "bare_invoke_us": round(m["bare"], 2), "runner_over_step": round(m["runner"] / m["step"], 3),
            "step_minus_bare_us": round(m["step"] - m["bare"], 2)}


@pytest.mark.parametrize("model", TRAIN_MODELS)
def test_train_step_in_turns(benchmark, model):
    benchmark.group = "train-step-in-turns"
    result = benchmark.pedantic(_in_turns, args=(model,), rounds=1, iterations=1)
    benchmark.extra_info.update(result)


# Trains until its stdin closes; says "ready" once it has taken a step.
TRAIN_PROCESS = r"""
import sys, threading
from tflite_hotswap.demo.training import bundled_model, synthetic
from tflite_hotswap.training import Trainer
x, y = synthetic(1280, shift=0.85, seed=1)
stop = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
with Trainer(bundled_model()) as tr:
    tr.step(x[:32], y[:32])
    print("ready", flush=True)
    while not stop.is_set():
        tr.fit((x, y), epochs=1, stop=stop)
    print(tr.steps, flush=True)
"""


def _loop(training: str) -> dict:
    rt = Runtime(bundled_model(), signature="infer")
    probe = synthetic(1, shift=0.85, seed=5)[0]
    took: list[int] = []
    failed = [0]
    stop = threading.Event()
    trained = [0]
    background = None
    if training == "thread":
        tr = Trainer(bundled_model())
        x, y = synthetic(1280, shift=0.85, seed=1)

        def train() -> None:
            while not stop.is_set():
                tr.fit((x, y), epochs=1, stop=stop)
            trained[0] = tr.steps
        background = threading.Thread(target=train)
        background.start()
    elif training == "process":
        child = subprocess.Popen([sys.executable, "-c", TRAIN_PROCESS], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, text=True, cwd=tempfile.gettempdir())
        assert child.stdout is not None and child.stdin is not None
        assert child.stdout.readline().strip() == "ready"

    def caller() -> None:
        out = np.empty((1, 4), np.float32)
        while not stop.is_set():
            t0 = time.perf_counter_ns()
            try:
                rt.run(probe, out=out)
            except HotswapError:
                failed[0] += 1
            took.append(time.perf_counter_ns() - t0)

    thread = threading.Thread(target=caller)
    thread.start()
    stop.wait(SECONDS)
    stop.set()
    thread.join()
    if background is not None:
        background.join()
        tr.close()
    if training == "process":
        child.stdin.close()
        trained[0] = int(child.stdout.readline())
        child.wait()
    rt.close()
    t = np.array(took)
    q = np.percentile(t, [50, 99, 99.9]) / 1e3
    return {"calls": len(t), "failed_calls": failed[0], "train_steps": trained[0],
            "p50_us": round(q[0], 1), "p99_us": round(q[1], 1), "p999_us": round(q[2], 1),
            "max_us": round(t.max() / 1e3, 1)}


@pytest.mark.parametrize("training", ["none", "thread", "process"])
def test_loop_latency_while_training(benchmark, training):
    benchmark.group = "loop-while-training"
    result = benchmark.pedantic(_loop, args=(training,), rounds=1, iterations=1)
    benchmark.extra_info.update(result)
    assert result["failed_calls"] == 0
    if training != "none":
        assert result["train_steps"] > 0
