"""Running exported models in onnxruntime: accuracy over batches and measured batch-1 latency."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from autoselect.data.batches import split_batch

__all__ = ["ort_session", "ort_accuracy", "ort_predictions", "ort_latency_ms", "latency_by_threads"]


def ort_session(path: str | Path, *, threads: int = 1):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3  # errors only: onnxruntime's warnings are not the user's to act on
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def ort_accuracy(path: str | Path, data: Iterable, *, threads: int = 2) -> float:
    sess = ort_session(path, threads=threads)
    correct = total = 0
    for batch in data:
        x, y = split_batch(batch)
        assert y is not None
        logits = sess.run(None, {"input": x.cpu().numpy().astype(np.float32)})[0]
        correct += int((logits.argmax(1) == y.cpu().numpy()).sum())
        total += len(y)
    return 100.0 * correct / total


def ort_predictions(path: str | Path, data: Iterable, *, threads: int = 2) -> np.ndarray:
    """The exported model's predicted class for every image of ``data``, in order."""
    sess = ort_session(path, threads=threads)
    preds = [sess.run(None, {"input": split_batch(batch)[0].cpu().numpy().astype(np.float32)})[0].argmax(1)
             for batch in data]
    return np.concatenate(preds) if preds else np.zeros(0, dtype=np.int64)


def ort_latency_ms(path: str | Path, input_shape: tuple[int, ...], *, runs: int = 200, warmup: int = 20,
                   threads: int = 1) -> float:
    """Median wall time of one batch-``input_shape[0]`` inference, in milliseconds."""
    sess = ort_session(path, threads=threads)
    x = np.random.default_rng(0).standard_normal(input_shape).astype(np.float32)
    for _ in range(warmup):
        sess.run(None, {"input": x})
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        sess.run(None, {"input": x})
        times.append(time.perf_counter() - t)
    return 1000.0 * statistics.median(times)


def latency_by_threads(paths: dict[str, str | Path], input_shape: tuple[int, ...], *, runs: int = 200,
                       threads: tuple[int, ...] | None = None) -> dict[str, dict[int, float]]:
    """Batch latency (ms) of each model at each intra-op thread count, measured interleaved (model by model within
    each thread count). Default thread counts: 1 and every core. A model should be compared at its own best count:
    at batch 1 here the FP32 model gains from a second thread while the INT8 one loses."""
    counts = threads or tuple(sorted({1, os.cpu_count() or 1}))
    out: dict[str, dict[int, float]] = {name: {} for name in paths}
    for n in counts:
        for name, path in paths.items():
            out[name][n] = ort_latency_ms(path, input_shape, runs=runs, threads=n)
    return out
