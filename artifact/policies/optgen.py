"""Belady's MIN replayed online on the past, and what it kept by signature: Hawkeye's OPTgen and predictor (Jain and
Lin, "Back to the Future: Leveraging Belady's Algorithm for Improved Cache Replacement", ISCA 2016), for one fully
associative expert cache read in layer-steps.

OPTgen. Each read of an expert closes the interval since its previous read. MIN keeps that expert across the interval
exactly when, at every layer-step inside it, fewer than ``C`` slots are taken by the experts that layer-step reads and
by the intervals MIN already keeps across it. Deciding the intervals in the order they close (the order the reads
arrive) gives MIN's hits: the interval-scheduling form of Belady's algorithm, so only the past is needed. A slot-time
that reaches ``C`` stays full (occupancy only grows), so "the interval is kept" is one comparison with the latest full
layer-step, and an interval that a full layer-step has already cut is known to be a MIN miss before it closes.

Predictor. Each interval is labelled by a signature of the read that opened it (Hawkeye's load PC; here whatever the
caller passes, e.g. the layer and the router rank). Once an interval is resolved (kept when it closes; cut when it
closes or as soon as a full layer-step lies inside it) it counts for its signature; ``kept_rate`` is that signature's
share of kept intervals so far (Laplace-smoothed).

Everything is integer bookkeeping: the same labels on every platform. ``misses`` counts what MIN would have loaded
(first reads and cut intervals); tests/test_flagship.py checks it against the ``belady`` bound's loads.
"""

from __future__ import annotations

import numpy as np


class OptGen:
    """MIN on the past of a cache of ``C`` slots over ``n_ids`` experts, with a kept-rate table of ``n_sigs``
    signatures."""

    def __init__(self, n_ids: int, C: int, n_sigs: int) -> None:
        if C < 1 or n_ids < 1 or n_sigs < 1:
            raise ValueError(f"optgen: need C, n_ids, n_sigs >= 1, got {C}, {n_ids}, {n_sigs}")
        self.C = int(C)
        self.occ = np.zeros(1024, np.int64)  # [layer-step]: slots MIN holds then (reads and kept intervals)
        self.prev = np.full(n_ids, -1, np.int64)  # layer-step of each expert's last read; -1 never read
        self.sig = np.zeros(n_ids, np.int64)  # signature of the read that opened its interval
        self.open = np.zeros(n_ids, bool)  # its interval is not resolved yet
        self.last_full = -1  # the latest layer-step whose occupancy reached C
        self.kept = np.zeros(n_sigs, np.int64)  # resolved intervals by signature: kept by MIN
        self.resolved = np.zeros(n_sigs, np.int64)  # and all of them
        self.reads = 0
        self.misses = 0  # reads MIN would have missed: first reads and cut intervals

    def access(self, ids: np.ndarray, g: int, sigs: np.ndarray) -> None:
        """Layer-step ``g`` (increasing) reads the distinct experts ``ids``, each with the signature ``sigs``."""
        if g >= self.occ.shape[0]:
            self.occ = np.concatenate([self.occ, np.zeros(max(self.occ.shape[0], g + 1 - self.occ.shape[0]),
                                                          np.int64)])
        self.occ[g] = ids.shape[0]
        before = self.last_full
        for x in ids.tolist():
            tp = int(self.prev[x])
            self.reads += 1
            if tp < 0:
                self.misses += 1
                continue
            kept = self.last_full <= tp
            if self.open[x]:
                self.open[x] = False
                self.resolved[self.sig[x]] += 1
                self.kept[self.sig[x]] += kept
            if not kept:
                self.misses += 1
            elif tp + 1 < g:
                span = self.occ[tp + 1:g]
                span += 1
                full = np.flatnonzero(span >= self.C)
                if full.shape[0]:
                    self.last_full = max(self.last_full, tp + 1 + int(full[-1]))
        if self.occ[g] >= self.C:
            self.last_full = max(self.last_full, g)
        if self.last_full > before:  # intervals a full layer-step now cuts: MIN misses, known before they close
            cut = np.flatnonzero(self.open & (self.prev < self.last_full))
            self.open[cut] = False
            self.resolved += np.bincount(self.sig[cut], minlength=self.resolved.shape[0])
        self.prev[ids] = g
        self.sig[ids] = sigs
        self.open[ids] = True

    def kept_rate(self, ids: np.ndarray) -> np.ndarray:
        """Share of MIN-kept intervals among the resolved ones opened with the signature each expert's last read had
        (one pseudo-count each way)."""
        s = self.sig[ids]
        return (self.kept[s] + 1) / (self.resolved[s] + 2)
