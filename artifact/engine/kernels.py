"""The device-side math of the engine: the NON-MoE stand-in and the expert FFN of a COMPUTE, reading weights from a
device slab of slots. Calibration times these same kernels, so the simulator's tables are the engine's own code.

NON-MoE part, the stand-in for attention, norms and the router (one real op on the compute stream):
``x = rms_norm(h) @ Wn_l^T``, ``h = h + x``; ``Wn_l`` is ``[d_model, d_model]``, ``x`` is the experts' input.

A COMPUTE gathers its tokens' expert inputs (``index_select``), runs the FFN of each of its experts reading the
weights in the device slot, scales by the gate and scatter-adds into the residual stream (``index_add_``). Two FFN
paths compute the same thing:

- ``grouped``: one ``torch._grouped_mm`` per matrix for all experts of the COMPUTE (tokens sorted by slot,
  groups = a contiguous slot range, zero-token groups skipped by the kernel). 8-10 kernel launches per COMPUTE
  (each grouped GEMM is two) whatever its expert count. Used on sm90/sm100 in bf16, where the CUTLASS kernel
  needs no host sync.
- ``loop``: per expert ``index_select``, ``mm``, activation, ``mm``, gate, ``index_add_`` with ``out=`` buffers;
  6-7 launches per expert. Used elsewhere (the grouped fallback of other GPUs syncs the host).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from artifact.models import ModelSpec

RMS_EPS = 1e-6  # epsilon of the NON-MoE stand-in's RMSNorm (Mixtral/OLMoE configs use 1e-5..1e-6)
_MAX_GROUPS = 1023  # torch's CUTLASS grouped GEMM takes fewer than 1024 groups per call


def grouped_mm_supported(device: torch.device, dtype: torch.dtype) -> tuple[bool, str]:
    """Whether ``torch._grouped_mm`` runs without a host sync here, and why not."""
    if not hasattr(torch, "_grouped_mm"):
        return False, f"torch {torch.__version__} has no torch._grouped_mm"
    if device.type == "cpu":
        return True, "cpu (synchronous anyway)"
    if device.type != "cuda":
        return False, f"device {device} is not cuda or cpu"
    if dtype != torch.bfloat16:
        return False, f"the CUTLASS grouped GEMM takes bfloat16 only (got {dtype}); other dtypes sync the host"
    major = torch.cuda.get_device_capability(device)[0]
    if major not in (9, 10):
        return False, f"compute capability {major}.x has no CUTLASS grouped GEMM (sm90/sm100 only); it would sync"
    return True, f"sm{major}0 bfloat16"


class ExpertKernels:
    """The NON-MoE stand-in and the expert FFN of a COMPUTE, reading weights from a device slab of slots.

    ``slots`` is ``[S, numel]`` on the device. Work items are built once (``use_work`` / ``chunk_work``) from views
    of prepared index, gate and offset tensors; ``run`` only launches kernels.
    """

    def __init__(self, model: ModelSpec, slots: torch.Tensor, path: str) -> None:
        if path not in ("loop", "grouped"):
            raise ValueError(f"FFN path must be 'loop' or 'grouped', got {path!r}")
        self.model = model
        self.path = path
        self.relu = model.activation == "relu"
        D, Fd = model.d_model, model.d_ff
        self.D, self.F = D, Fd
        self.F1 = Fd if self.relu else 2 * Fd  # rows of the first matrix (gate and up stacked)
        self.slots = slots
        S = slots.shape[0]
        a = self.F1 * D
        self.device = slots.device
        self.dtype = slots.dtype
        if path == "grouped":
            # [S, D, F1] and [S, F, D]: transposed views of the [out, in] matrices ("column-major" B operands).
            self.W1 = slots[:, :a].view(S, self.F1, D).transpose(1, 2)
            self.W2 = slots[:, a:].view(S, D, Fd).transpose(1, 2)
        else:
            self.w1t = [slots[s, :a].view(self.F1, D).t() for s in range(S)]  # each [D, F1]
            self.w2t = [slots[s, a:].view(D, Fd).t() for s in range(S)]  # each [F, D]
        self._cap = 0
        self._views: dict[int, tuple] = {}

    @property
    def capacity(self) -> int:
        """Gathered tokens per COMPUTE the staging buffers hold now."""
        return self._cap

    def ensure_capacity(self, max_rows: int) -> None:
        """Staging buffers for up to ``max_rows`` gathered tokens per COMPUTE (allocated before timing)."""
        if max_rows <= self._cap:
            return
        self._cap = max_rows
        kw = {"device": self.device, "dtype": self.dtype}
        self.xin = torch.empty(max_rows, self.D, **kw)  # [n, D] gathered expert inputs
        if self.path == "loop":
            self.hid = torch.empty(max_rows, self.F1, **kw)  # [n, F1]
            self.y = torch.empty(max_rows, self.D, **kw)  # [n, D]
        self._views = {}

    def _rows_views(self, n: int) -> tuple:
        v = self._views.get(n)
        if v is None:
            xin = self.xin[:n]
            if self.path == "loop":
                hid = self.hid[:n]
                act = hid if self.relu else hid[:, :self.F]
                up = None if self.relu else hid[:, self.F:]
                v = (xin, hid, act, up, self.y[:n])
            else:
                v = (xin,)
            self._views[n] = v
        return v

    def use_work(self, rows: torch.Tensor, gate: torch.Tensor, slot: int) -> tuple:
        """One expert of a COMPUTE on the loop path: ``rows`` ``[n]`` token rows, ``gate`` ``[n, 1]``."""
        xin, hid, act, up, y = self._rows_views(int(rows.shape[0]))
        return (rows, xin, self.w1t[slot], hid, act, up, self.w2t[slot], y, gate)

    def chunk_work(self, rows: torch.Tensor, gate: torch.Tensor, slot_lo: int, slot_hi: int,
                   offs: torch.Tensor) -> tuple:
        """Experts in slots ``slot_lo..slot_hi-1`` on the grouped path: ``rows`` sorted by slot, ``offs`` ``[G]``
        int32 cumulative row ends per slot."""
        (xin,) = self._rows_views(int(rows.shape[0]))
        return (rows, xin, self.W1[slot_lo:slot_hi], self.W2[slot_lo:slot_hi], offs, gate)

    def run(self, work: list[tuple], x: torch.Tensor, out: torch.Tensor, ffn_only: bool = False) -> None:
        """Launch a COMPUTE: gather ``x`` rows, FFN, gate, scatter-add into ``out``. ``ffn_only`` launches just the
        expert matmuls and activation on whatever is staged (to time "the expert compute itself")."""
        relu, Fd = self.relu, self.F
        if self.path == "loop":
            for rows, xin, w1t, hid, act, up, w2t, y, gate in work:
                if not ffn_only:
                    torch.index_select(x, 0, rows, out=xin)  # [n, D]
                torch.mm(xin, w1t, out=hid)  # [n, F1]
                if relu:
                    hid.relu_()
                else:
                    F.silu(act, inplace=True)
                    act.mul_(up)  # [n, F]
                torch.mm(act, w2t, out=y)  # [n, D]
                if not ffn_only:
                    y.mul_(gate)
                    out.index_add_(0, rows, y)
        else:
            for rows, xin, W1, W2, offs, gate in work:
                if not ffn_only:
                    torch.index_select(x, 0, rows, out=xin)  # [n, D]
                hid = torch._grouped_mm(xin, W1, offs=offs)  # [n, F1]
                if relu:
                    act = hid.relu_()
                else:
                    act = hid[:, :Fd]
                    F.silu(act, inplace=True)
                    act.mul_(hid[:, Fd:])  # [n, F]: strided view, grouped_mm takes the row stride
                y = torch._grouped_mm(act, W2, offs=offs)  # [n, D]
                if not ffn_only:
                    y.mul_(gate)
                    out.index_add_(0, rows, y)

    @staticmethod
    def nonmoe(h: torch.Tensor, x: torch.Tensor, wn_t: torch.Tensor) -> None:
        """``x = rms_norm(h) @ Wn^T`` (the experts' input), ``h += x``. ``h``, ``x`` ``[T, D]``; ``wn_t`` ``[D, D]``."""
        torch.mm(torch.rms_norm(h, (h.shape[1],), eps=RMS_EPS), wn_t, out=x)  # F.rms_norm minus its Python layer
        h.add_(x)


def chunk_slots(slots_sorted: np.ndarray, counts: np.ndarray) -> list[tuple[int, int, int, int, np.ndarray]]:
    """Split a COMPUTE's experts (sorted by slot) into grouped-GEMM calls of at most ``_MAX_GROUPS`` consecutive slots.

    Returns ``(use_lo, use_hi, slot_lo, slot_hi, offs)`` with ``offs`` the int32 cumulative row ends of every slot
    in ``slot_lo..slot_hi-1`` (slots without tokens repeat the previous end: empty groups).
    """
    out = []
    i, n = 0, slots_sorted.shape[0]
    while i < n:
        lo = int(slots_sorted[i])
        j = i
        while j < n and slots_sorted[j] - lo < _MAX_GROUPS:
            j += 1
        hi = int(slots_sorted[j - 1]) + 1
        per_slot = np.zeros(hi - lo, np.int64)
        per_slot[slots_sorted[i:j] - lo] = counts[i:j]
        out.append((i, j, lo, hi, np.cumsum(per_slot).astype(np.int32)))
        i = j
    return out
