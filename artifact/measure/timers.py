"""Timing of device work: GPU time from CUDA events with the stream held while the host queues, or ``perf_counter``
on the CPU (where every op has finished when it returns)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


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
        if not self.cuda:
            for _ in range(warmup):
                fn()
            ts = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                fn()
                ts.append((time.perf_counter() - t0) * 1e3)
            med = statistics.median(ts)
            return med, med * 1e3
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
        return statistics.median(a.elapsed_time(b) for a, b in ev), issue_us
