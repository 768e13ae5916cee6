"""CUDA-graph execution of a plan: the engine's whole issue sequence captured once, then replayed per repeat.

A plan is fixed before it runs, so what the eager issue loop does on the host (one Python call per copy, kernel and
event: 50-200 us per layer-step on an H200's host, FACTS.md section 7) can be recorded once and replayed by one
``cudaGraphLaunch``. The graph holds exactly the operations of the eager loop, on the same tensors:

- Capture runs the eager issue loop (:meth:`OffloadEngine._issue <artifact.engine.executor.OffloadEngine._issue>`,
  lean program: only the events dependencies need) under ``torch.cuda.graph`` on the engine's compute stream.
- The copy stream is forked from the capture stream (``wait_stream``) before the first LOAD and joined back after
  the issue loop, as multi-stream capture requires; each event the loop records on one stream and waits on from the
  other becomes an edge between the two branches of the graph: the same partial order as the eager run, so the same
  freedom from races (a slot is not overwritten before the COMPUTE that reads it has finished).
- A LOAD's ``copy_`` from the pinned slab becomes a memcpy node (host-to-device, copy engine). A copy from pageable
  memory cannot be captured: graph mode refuses an engine whose slab is not pinned.
- Every op the engine issues is capturable: ``index_select`` and ``mm`` with ``out=``, ``rms_norm``, ``relu_``,
  ``silu_``, ``mul_``, ``add_``, ``index_add_``, and ``torch._grouped_mm``, which the engine uses only where its
  CUTLASS kernel runs without a host sync (sm90/sm100, bfloat16: :func:`~artifact.engine.kernels.grouped_mm_supported`;
  ``gpu_checks`` has replayed it from a graph on the H200); elsewhere the engine takes the ``loop`` path, whose ops
  are all capturable. Temporaries without an ``out=`` form (the outputs of ``rms_norm`` and ``_grouped_mm``) come
  from the graph's private memory pool, allocated at capture.
- One eager pass runs before the capture (lazy initialisation: cuBLAS handles and workspaces on the compute stream).

Replay: the start state (preloaded slots, layer-0 hidden states) is restored before each replay, outside the timed
region (:meth:`OffloadEngine._reset`); the host time of ``replay()`` is the run's issue time. The counts a run reports
(copies, bytes, COMPUTEs, uses) are the capture pass's: the operations the graph holds, replayed alike every time.

Memory: one graph per prepared plan (kept in ``PreparedRun.programs["graph"]``); the engine releases it when it
prepares another plan. Timelines (per-operation timing events) are not captured: graph mode runs lean only.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from artifact.engine.executor import OffloadEngine
    from artifact.engine.prepare import PreparedRun

GRAPH_KEY = "graph"  # where a PreparedRun keeps its captured graph (PreparedRun.programs)
FAILED_KEY = "graph_failed"  # ... or why its capture failed (graph="auto" does not try again)


@dataclass
class CapturedPlan:
    """One plan's issue sequence as a CUDA graph."""

    graph: torch.cuda.CUDAGraph
    counts: object  # IssueCounts of the capture pass (what the graph holds)
    capture_ms: float  # host time of the capture (instantiation included)
    pool_bytes: int  # device memory the graph's private pool reserved (temporaries), an upper bound


def graph_refusal(engine: OffloadEngine, timeline: bool) -> str | None:
    """Why a run of ``engine`` cannot be a graph replay (None: it can)."""
    if not engine.cuda:
        return "graph mode needs a CUDA device (on the CPU the engine runs eagerly, synchronously)"
    if timeline:
        return "timeline=True: per-operation timing events are not captured; graph mode runs lean only"
    if not engine.weights.pinned:
        return "the host slab is not pinned: a copy from pageable memory cannot be captured in a CUDA graph"
    return None


def capture_plan(engine: OffloadEngine, prep: PreparedRun, prog, issue) -> CapturedPlan:
    """Capture ``issue(prep, prog)`` (the engine's issue loop over a lean program) into a CUDA graph.

    The caller has run one eager pass already (lazy initialisation) and leaves the compute stream current. Nothing
    runs on the device during capture: the start state is restored before each replay, not here.
    """
    cs, ks = engine.compute_stream, engine.copy_stream
    dev = engine.device
    torch.cuda.synchronize(dev)
    torch.cuda.empty_cache()
    reserved0 = torch.cuda.memory_reserved(dev)
    graph = torch.cuda.CUDAGraph()
    forks = prep.plan.num_loads > 0
    t0 = time.perf_counter()
    # thread_local: only this thread's unsafe calls invalidate the capture (another thread of the process, e.g. a
    # progress bar, may touch CUDA state meanwhile).
    with torch.inference_mode(), torch.cuda.graph(graph, stream=cs, capture_error_mode="thread_local"):
        if forks:
            ks.wait_stream(cs)  # fork: the copy stream joins the capture
        counts = issue(prep, prog)
        if forks:
            cs.wait_stream(ks)  # join: every copy is part of the graph before the capture ends
    capture_ms = (time.perf_counter() - t0) * 1e3
    torch.cuda.synchronize(dev)
    pool = max(0, torch.cuda.memory_reserved(dev) - reserved0)
    return CapturedPlan(graph, counts, capture_ms, int(pool))


def release_graph(prep: PreparedRun) -> None:
    """Free ``prep``'s graph (its executable and its memory pool), if it has one."""
    captured = prep.programs.pop(GRAPH_KEY, None)
    prep.programs.pop(FAILED_KEY, None)
    if captured is not None:
        captured.graph.reset()
