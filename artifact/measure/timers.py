"""Timing of device work: GPU time from CUDA events with the stream held while the host queues, or ``perf_counter``
on the CPU (where every op has finished when it returns)."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence

import torch


def spread(samples: Sequence[float]) -> dict:
    """How far repeated measurements of one figure scatter: ``n``, ``median``, ``min``, ``max``, ``iqr_rel`` (the
    interquartile range over the median) and ``ci95_rel`` (half the width of the distribution-free 95% confidence
    interval of the median, from order statistics: ranks n/2 -+ 0.98 sqrt(n), over the median). Relative figures
    are None when the median is not positive."""
    xs = sorted(float(x) for x in samples)
    n = len(xs)
    if not n:
        raise ValueError("spread: no samples")
    med = statistics.median(xs)
    q1, q3 = (statistics.quantiles(xs, n=4, method="inclusive")[::2] if n > 1 else (xs[0], xs[0]))
    half = 0.98 * math.sqrt(n)
    lo = min(max(int(math.floor(n / 2 - half)), 0), n - 1)
    hi = min(max(int(math.ceil(n / 2 + half)) - 1, 0), n - 1)
    pos = med > 0
    return {"n": n, "median": med, "min": xs[0], "max": xs[-1],
            "iqr_rel": (q3 - q1) / med if pos else None,
            "ci95_rel": (xs[hi] - xs[lo]) / 2 / med if pos else None}


class Timer:
    """Times ``fn`` ``repeats`` times: CUDA events around each call (GPU time, host queued ahead), or perf_counter.

    On the GPU a spin kernel (``torch.cuda._sleep``) holds the stream while the host queues every repeat, so the
    events time the kernels, not Python's launch rate; the host's own issue time per call is returned beside it.
    """

    def __init__(self, device: torch.device, stream: torch.cuda.Stream | None = None) -> None:
        self.device = device
        self.cuda = device.type == "cuda"
        self.stream = stream

    def __call__(self, fn: Callable[[], None], repeats: int, warmup: int = 2) -> tuple[float, float]:
        """(median ms per call, median host issue us per call)."""
        ms, issue_us = self.samples(fn, repeats, warmup)
        return statistics.median(ms), issue_us

    def samples(self, fn: Callable[[], None], repeats: int, warmup: int = 2) -> tuple[list[float], float]:
        """(ms of each of ``repeats`` calls, host issue us per call)."""
        if not self.cuda:
            for _ in range(warmup):
                fn()
            ts = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                fn()
                ts.append((time.perf_counter() - t0) * 1e3)
            return ts, statistics.median(ts) * 1e3
        stream = self.stream or torch.cuda.current_stream(self.device)
        with torch.cuda.stream(stream):
            for _ in range(warmup):
                fn()
            torch.cuda.synchronize(self.device)
            t0 = time.perf_counter()
            fn()
            issue_s = time.perf_counter() - t0
            torch.cuda.synchronize(self.device)
            ev = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(repeats)]
            # Hold the stream while the host queues every repeat (~2 GHz: 2e6 cycles per ms), capped at 2 s.
            hold_ms = min(2000.0, 1.5 * repeats * issue_s * 1e3 + 1.0)
            torch.cuda._sleep(int(hold_ms * 2e6))
            t1 = time.perf_counter()
            for a, b in ev:
                a.record(stream)
                fn()
                b.record(stream)
            issue_us = (time.perf_counter() - t1) / repeats * 1e6
            torch.cuda.synchronize(self.device)
        return [a.elapsed_time(b) for a, b in ev], issue_us

    def graph_samples(self, fn: Callable[[], None], repeats: int, per_graph: int = 8,
                      warmup: int = 2) -> tuple[list[float], float]:
        """As :meth:`samples`, with ``per_graph`` back-to-back calls of ``fn`` captured in one CUDA graph and each
        replay timed (ms per call = replay / ``per_graph``): what the operations cost inside the engine's graph mode,
        where no launch gap separates them. Eager :meth:`samples` where graphs are unavailable (the CPU)."""
        if not self.cuda:
            return self.samples(fn, repeats, warmup)
        stream = self.stream or torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))  # inputs made on the current stream are ready
        with torch.cuda.stream(stream):
            for _ in range(warmup):
                fn()
        torch.cuda.synchronize(self.device)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=stream):
            for _ in range(per_graph):
                fn()
        ms, issue_us = self.replay_samples(graph, stream, repeats)
        del graph
        return [m / per_graph for m in ms], issue_us / per_graph

    def replay_samples(self, graph: torch.cuda.CUDAGraph, stream: torch.cuda.Stream,
                       repeats: int) -> tuple[list[float], float]:
        """(ms of each of ``repeats`` replays of a captured ``graph`` on ``stream``, host us per replay): one untimed
        replay first (the first launch uploads the graph), then every replay between CUDA events with the stream
        held while the host queues them."""
        with torch.cuda.stream(stream):
            graph.replay()
            torch.cuda.synchronize(self.device)
            ev = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(repeats)]
            torch.cuda._sleep(int(2e6))  # hold the stream ~1 ms while the host queues every replay
            t1 = time.perf_counter()
            for a, b in ev:
                a.record(stream)
                graph.replay()
                b.record(stream)
            issue_us = (time.perf_counter() - t1) / repeats * 1e6
            torch.cuda.synchronize(self.device)
        return [a.elapsed_time(b) for a, b in ev], issue_us

