"""Host-to-device copy times, measured the way the engine copies: the copy model of a hardware profile.

The engine keeps every expert in one pinned host slab and copies one expert at a time, from its slice of the slab
into a slot of a preallocated device slab, on a dedicated copy stream, back to back (``OffloadEngine._issue``).
:func:`measure_copies` times exactly that:

- one pinned host slab (``torch.empty(..., pin_memory=True)``, one allocation like the engine's) of at least four
  copies of the largest size, and one device slab of slots; copy ``i`` of a burst reads the next slice of the host
  slab (another expert) and writes the next slot;
- a burst of ``k`` copies of one size back to back on a copy stream held by a spin kernel while the host queues
  them (so the device, not Python, sets the pace), each copy between its own pair of CUDA events, as the engine's
  timeline records a LOAD; the burst's sample is the median of its ``k`` copy times;
- rounds: one burst per size, the sizes in a rotated order each round (round-robin: a drift of clocks or of the
  link hits every size alike), repeated until the 95% confidence interval of every size's median is within
  ``target_rel`` of it (half-width), or ``max_rounds``, or ``max_seconds``. What was reached is recorded per size
  (:func:`~artifact.measure.timers.spread` of the round samples, rounds, copies per burst, converged or not).

On the CPU the same pattern runs as synchronous ``memcpy`` timed with ``perf_counter`` (a harness test; the numbers
mean nothing for a GPU).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Sequence

import torch

from artifact.measure.timers import spread

BURST_BYTES = 128_000_000  # bytes per burst: small sizes get more copies (up to MAX_BURST), large ones MIN_BURST
MIN_BURST, MAX_BURST = 4, 32
HOST_COPIES = 4  # the host slab holds at least this many copies of the largest size (distinct sources)
DEVICE_SLOTS = 2


def burst_size(nbytes: int) -> int:
    return int(min(MAX_BURST, max(MIN_BURST, math.ceil(BURST_BYTES / max(nbytes, 1)))))


class _CopyBench:
    """The engine's copy pattern at one set of sizes: a pinned host slab, device slots, a copy stream."""

    def __init__(self, device: torch.device, sizes: Sequence[int]) -> None:
        self.device = device
        self.cuda = device.type == "cuda"
        big = max(sizes)
        host_bytes = max(HOST_COPIES * big, max(burst_size(n) * n for n in sizes))
        self.host = torch.empty(host_bytes, dtype=torch.uint8, pin_memory=self.cuda)  # one pinned piece, like the slab
        self.host.fill_(1)  # touch every page before timing
        self.dev = torch.empty(DEVICE_SLOTS, big, dtype=torch.uint8, device=device)  # [slots, bytes]
        self.stream = torch.cuda.Stream(device) if self.cuda else None
        self.cursor = 0

    def _pairs(self, n: int, k: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        rows = self.host.shape[0] // n  # slices of the slab: "experts" of n bytes
        out = []
        for i in range(k):
            r = (self.cursor + i) % rows
            out.append((self.host[r * n:(r + 1) * n], self.dev[i % DEVICE_SLOTS, :n]))
        self.cursor += k
        return out

    def burst(self, n: int, k: int) -> list[float]:
        """ms of each of ``k`` back-to-back copies of ``n`` bytes (distinct host slices, alternating slots)."""
        pairs = self._pairs(n, k)
        if not self.cuda:
            ts = []
            for src, dst in pairs:
                t0 = time.perf_counter()
                dst.copy_(src)
                ts.append((time.perf_counter() - t0) * 1e3)
            return ts
        ev = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(k)]
        torch.cuda.synchronize(self.device)
        with torch.cuda.stream(self.stream):
            # Hold the copy stream while the host queues the burst (~2e6 cycles per ms; ~10 us of host per copy).
            torch.cuda._sleep(int((0.2 + 0.05 * k) * 2e6))
            for (src, dst), (a, b) in zip(pairs, ev):
                a.record(self.stream)
                dst.copy_(src, non_blocking=True)
                b.record(self.stream)
        torch.cuda.synchronize(self.device)
        return [a.elapsed_time(b) for a, b in ev]


def measure_copies(device: str | torch.device, sizes_bytes: Sequence[int], *, target_rel: float = 0.005,
                   min_rounds: int = 5, max_rounds: int = 60, max_seconds: float = 40.0
                   ) -> tuple[list[tuple[int, float]], dict[str, dict]]:
    """Median ms of one host-to-device copy of each size, the engine's way (see the module docstring).

    Returns ``(table [(bytes, ms)] sorted by size, spread by str(bytes))``; each spread entry is
    :func:`~artifact.measure.timers.spread` of the size's round samples (one per burst) plus ``rounds``,
    ``copies_per_burst``, ``converged`` (the confidence half-width reached ``target_rel``) and ``gbps``.
    """
    dev = torch.device(device)
    sizes = sorted({int(s) for s in sizes_bytes})
    if not sizes or sizes[0] <= 0:
        raise ValueError(f"measure_copies: sizes must be positive, got {list(sizes_bytes)}")
    bench = _CopyBench(dev, sizes)
    k = {n: burst_size(n) for n in sizes}
    for n in sizes:  # warm-up: first touches of the device slots, the copy engines' clocks
        bench.burst(n, 2)
    samples: dict[int, list[float]] = {n: [] for n in sizes}
    t0 = time.perf_counter()
    rounds = 0
    while rounds < max_rounds:
        shift = rounds % len(sizes)
        for n in sizes[shift:] + sizes[:shift]:  # round-robin: each size in every position over the rounds
            samples[n].append(statistics.median(bench.burst(n, k[n])))
        rounds += 1
        if rounds >= min_rounds and (_converged(samples, target_rel) or time.perf_counter() - t0 > max_seconds):
            break
    table, spreads = [], {}
    for n in sizes:
        sp = spread(samples[n])
        table.append((n, sp["median"]))
        spreads[str(n)] = {**sp, "rounds": rounds, "copies_per_burst": k[n],
                           "converged": sp["ci95_rel"] is not None and sp["ci95_rel"] <= target_rel,
                           "gbps": n / (sp["median"] * 1e6) if sp["median"] > 0 else None}
    del bench
    return table, spreads


def _converged(samples: dict[int, list[float]], target_rel: float) -> bool:
    for xs in samples.values():
        ci = spread(xs)["ci95_rel"]
        if ci is None or ci > target_rel:
            return False
    return True
