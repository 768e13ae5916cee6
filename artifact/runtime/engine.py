"""The offloading engine: executes a :class:`~artifact.core.plan.Plan` for real, with PyTorch.

Memory
    Every routed expert of every MoE layer lives in ONE host slab (``ExpertWeights.host``, ``[L * E, numel]``): a
    single ``torch.empty(total, pin_memory=True)`` when CUDA is available, sliced per expert. Pinning each expert
    separately would round every allocation up to a power of two (pytorch #150517, #95823: an 18.9 MB expert costs
    32 MB); the one slab may be rounded once. An expert is contiguous, so one LOAD is one copy of
    ``bytes_per_expert`` bytes. Layout of one expert (row-major, in this order):

    - ``relu`` (Switch): ``wi [d_ff, d_model]``, ``wo [d_model, d_ff]``; FFN ``wo(relu(wi x))``.
    - ``swiglu``: ``gate [d_ff, d_model]``, ``up [d_ff, d_model]``, ``down [d_model, d_ff]``;
      FFN ``down(silu(gate x) * up x)``. ``gate`` and ``up`` are adjacent, so one matmul computes both.

    The device holds a slab of ``cache_experts`` slots (``[C, numel]``), allocated once. Every buffer a run needs
    (hidden states, expert-input staging, index and gate tensors for the whole plan) is allocated by ``prepare``,
    before timing. In steady state only PyTorch's caching allocator hands out the outputs of ``rms_norm`` and
    ``_grouped_mm`` (ops without an ``out=`` form): cached blocks, no ``cudaMalloc``.

Math (what "the model" is here)
    Each step's tokens start from a seeded random hidden state (``make_inputs``). Layer ``l`` of a step:

    - NON-MoE part, the stand-in for attention, norms and the router (one real op on the compute stream):
      ``x = rms_norm(h) @ Wn_l^T``, ``h = h + x``; ``Wn_l`` is ``[d_model, d_model]``, ``x`` is the experts' input.
    - MoE part: ``h = h + sum_k gate_k * FFN_{e_k}(x)`` over the token's top-k experts from the workload (no router:
      the routing is the trace's). Gates are ``workload.gates`` when the trace has them, else ``1 / top_k``.

    Weights are scaled like an init (``N(0, 1) / sqrt(fan_in)``) so activations stay O(1) through many layers.
    ``dense_reference`` computes the same thing with every expert resident and no plan: offloading must not change it.

Execution (host issue order of plan.py)
    LOADs are ``non_blocking`` copies from the pinned slab into a device slot on a dedicated copy stream, in plan
    order (one FIFO link). NON-MoE ops and COMPUTEs run on the compute stream. Dependencies are CUDA events, never a
    host sync: a LOAD waits for the event after COMPUTE ``load_wait`` (slot reuse) and after NON-MoE ``load_gate``;
    a COMPUTE waits for the events of the LOADs its uses read. Because each stream runs in order, one wait on the
    latest event covers the earlier ones, so each op waits on at most one event and only when that event is newer
    than what its stream already waited for (the same partial order, fewer API calls).

    LOADs that the plan issues after a layer-step's last COMPUTE (prefetches; their ``load_before`` is the next
    layer-step's first COMPUTE and their gate is an earlier layer-step) are issued before that next layer-step's
    NON-MoE op; demand loads, gated on their own layer-step's NON-MoE, right before their COMPUTE.

    A COMPUTE gathers its tokens' expert inputs (``index_select``), runs the FFN of each of its experts reading the
    weights in the device slot, scales by the gate and scatter-adds into the residual stream (``index_add_``). All
    index and gate tensors are prepared for the whole plan before timing: no ``.item()``, ``nonzero`` or host sync
    inside a step. Two FFN paths compute the same thing:

    - ``grouped``: one ``torch._grouped_mm`` per matrix for all experts of the COMPUTE (tokens sorted by slot,
      groups = a contiguous slot range, zero-token groups skipped by the kernel). 8-10 kernel launches per COMPUTE
      (each grouped GEMM is two) whatever its expert count. Used on sm90/sm100 in bf16, where the CUTLASS kernel
      needs no host sync.
    - ``loop``: per expert ``index_select``, ``mm``, activation, ``mm``, gate, ``index_add_`` with ``out=`` buffers;
      6-7 launches per expert. Used elsewhere (the grouped fallback of other GPUs syncs the host).

On the CPU the same code runs synchronously: streams and events become no-ops (``_HostStream``), timestamps are
``perf_counter`` readings around each op (``_HostStamp``), so CI tests the engine end to end.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from artifact.core.plan import Plan, PlanError, check_plan, check_structure
from artifact.core.timeline import Timeline
from artifact.core.workload import Workload
from artifact.models import ModelSpec

RMS_EPS = 1e-6  # epsilon of the NON-MoE stand-in's RMSNorm (Mixtral/OLMoE configs use 1e-5..1e-6)
_TORCH_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
_MAX_GROUPS = 1023  # torch's CUTLASS grouped GEMM takes fewer than 1024 groups per call


def torch_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        if dtype not in _TORCH_DTYPES.values():
            raise ValueError(f"engine dtype must be one of {sorted(_TORCH_DTYPES)}, got {dtype}")
        return dtype
    try:
        return _TORCH_DTYPES[dtype]
    except KeyError:
        raise ValueError(f"engine dtype must be one of {sorted(_TORCH_DTYPES)}, got {dtype!r}") from None


def expert_layout(model: ModelSpec) -> list[tuple[str, tuple[int, int], int]]:
    """``(name, shape, element offset)`` of each matrix inside one expert's contiguous block."""
    D, Fd = model.d_model, model.d_ff
    if model.activation == "relu":
        mats = [("wi", (Fd, D)), ("wo", (D, Fd))]
    else:
        mats = [("gate", (Fd, D)), ("up", (Fd, D)), ("down", (D, Fd))]
    out, off = [], 0
    for name, shape in mats:
        out.append((name, shape, off))
        off += shape[0] * shape[1]
    return out


def expert_numel(model: ModelSpec) -> int:
    return model.matrices * model.d_model * model.d_ff


def _same_shape(a: ModelSpec, b: ModelSpec) -> str | None:
    """None when two specs describe the same MoE tensors, else what differs."""
    for attr in ("moe_layers", "experts", "top_k", "d_model", "d_ff", "activation"):
        if getattr(a, attr) != getattr(b, attr):
            return f"{attr} {getattr(a, attr)} vs {getattr(b, attr)}"
    return None


# --------------------------------------------------------------------------------------------------------------
# Weights
# --------------------------------------------------------------------------------------------------------------


@dataclass
class ExpertWeights:
    """The model's weights on the host: one slab of every routed expert, plus the NON-MoE stand-in matrices.

    ``host`` is ``[L * E, numel]`` (row ``gid = layer * E + expert``), a view of one allocation; ``nonmoe`` is
    ``[L, d_model, d_model]`` float32 (tiny, copied to the device once per engine).
    """

    model: ModelSpec
    host: torch.Tensor  # [L * E, numel], pinned when CUDA is available
    nonmoe: torch.Tensor  # [L, D, D] float32
    source: str = "random"

    @property
    def dtype(self) -> torch.dtype:
        return self.host.dtype

    @property
    def bytes_per_expert(self) -> int:
        return int(self.host.shape[1] * self.host.element_size())

    @property
    def pinned(self) -> bool:
        return bool(self.host.is_pinned()) if torch.cuda.is_available() else False

    def expert(self, gid: int) -> torch.Tensor:
        return self.host[gid]  # [numel]

    def matrices(self, gid: int) -> dict[str, torch.Tensor]:
        """Named views of expert ``gid``'s matrices (no copy)."""
        flat = self.host[gid]
        return {name: flat[off:off + r * c].view(r, c) for name, (r, c), off in expert_layout(self.model)}

    @staticmethod
    def _slab(model: ModelSpec, dtype: torch.dtype, pin: bool | None) -> torch.Tensor:
        pin = torch.cuda.is_available() if pin is None else pin
        total = model.total_experts * expert_numel(model)
        # One allocation for all experts; slicing it never re-pins (see the module docstring).
        flat = torch.empty(total, dtype=dtype, pin_memory=pin)
        return flat.view(model.total_experts, expert_numel(model))

    @staticmethod
    def _nonmoe_random(model: ModelSpec, seed: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed + 7919)  # independent of the expert draws
        D = model.d_model
        return torch.randn(model.moe_layers, D, D, generator=gen) * D ** -0.5

    @classmethod
    def random(cls, model: ModelSpec, dtype: str | torch.dtype | None = None, seed: int = 0, pin: bool | None = None,
               init_device: str | None = None) -> ExpertWeights:
        """Seeded ``N(0, 1) / sqrt(fan_in)`` weights.

        ``init_device`` (default: ``cuda`` when available) is where the numbers are drawn, layer by layer, before
        they are copied into the host slab: drawing tens of GB on the CPU takes minutes, on the GPU seconds. The
        values depend on the seed and on that device's generator, so pass the same ``ExpertWeights`` to the engine
        and to :func:`dense_reference`.
        """
        dt = torch_dtype(dtype if dtype is not None else model.dtype)
        dev = torch.device(init_device or ("cuda" if torch.cuda.is_available() else "cpu"))
        host = cls._slab(model, dt, pin)
        gen = torch.Generator(device=dev).manual_seed(seed)
        E = model.experts
        for layer in range(model.moe_layers):
            for _name, (r, c), off in expert_layout(model):
                w = torch.randn(E, r * c, generator=gen, device=dev, dtype=torch.float32)  # [E, r * c]
                w = w.mul_(c ** -0.5).to(dt)  # fan_in = columns of a [out, in] matrix
                for e in range(E):  # contiguous row -> contiguous slice of the slab: one plain copy each
                    host[layer * E + e, off:off + r * c].copy_(w[e])
        return cls(model, host, cls._nonmoe_random(model, seed), f"random(seed={seed}, init={dev.type})")

    @classmethod
    def from_safetensors(cls, path: str | Path, model: ModelSpec, dtype: str | torch.dtype | None = None,
                         pin: bool | None = None, seed: int = 0) -> ExpertWeights:
        """Load expert weights from a safetensors file.

        Expected tensor names (``l`` = MoE layer 0..L-1, ``e`` = expert 0..E-1), each ``[out, in]`` as in
        ``nn.Linear.weight``:

        - relu: ``layers.{l}.experts.{e}.wi`` ``[d_ff, d_model]`` and ``layers.{l}.experts.{e}.wo`` ``[d_model, d_ff]``
        - swiglu: ``layers.{l}.experts.{e}.gate`` / ``.up`` ``[d_ff, d_model]`` and ``.down`` ``[d_model, d_ff]``
        - optional ``layers.{l}.nonmoe`` ``[d_model, d_model]`` (all layers or none); seeded random when absent.

        Tensors are converted to ``dtype`` (default ``model.dtype``). Errors name the file, the tensor and the shape.
        """
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"weights file {path}: no such file")
        dt = torch_dtype(dtype if dtype is not None else model.dtype)
        host = cls._slab(model, dt, pin)
        E, D = model.experts, model.d_model
        with safe_open(str(path), framework="pt") as fh:
            names = set(fh.keys())

            def get(name: str, shape: tuple[int, int]) -> torch.Tensor:
                if name not in names:
                    raise ValueError(f"weights file {path}: tensor {name!r} is missing (model {model.name}: "
                                     f"{model.moe_layers} layers x {E} experts, {model.activation})")
                t = fh.get_tensor(name)
                if tuple(t.shape) != shape:
                    raise ValueError(f"weights file {path}: tensor {name!r} has shape {list(t.shape)}, expected "
                                     f"{list(shape)} for model {model.name} (d_model {D}, d_ff {model.d_ff})")
                return t

            for layer in range(model.moe_layers):
                for e in range(E):
                    flat = host[layer * E + e]
                    for mname, shape, off in expert_layout(model):
                        t = get(f"layers.{layer}.experts.{e}.{mname}", shape)
                        flat[off:off + shape[0] * shape[1]].view(shape).copy_(t.to(dt))
            nm_names = [f"layers.{layer}.nonmoe" for layer in range(model.moe_layers)]
            present = [n in names for n in nm_names]
            if any(present) and not all(present):
                missing = nm_names[present.index(False)]
                raise ValueError(f"weights file {path}: has some layers.*.nonmoe tensors but not {missing!r} "
                                 "(give all layers or none)")
            if all(present):
                nonmoe = torch.stack([get(n, (D, D)).float() for n in nm_names])
            else:
                nonmoe = cls._nonmoe_random(model, seed)
        return cls(model, host, nonmoe, f"safetensors:{path}")

    def save_safetensors(self, path: str | Path) -> Path:
        """Write the tensors under the names :meth:`from_safetensors` reads (copies each tensor: test-sized use)."""
        from safetensors.torch import save_file

        path = Path(path)
        E = self.model.experts
        tensors = {}
        for gid in range(self.model.total_experts):
            layer, e = divmod(gid, E)
            for name, t in self.matrices(gid).items():
                tensors[f"layers.{layer}.experts.{e}.{name}"] = t.clone()
        for layer in range(self.model.moe_layers):
            tensors[f"layers.{layer}.nonmoe"] = self.nonmoe[layer].clone()
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(path))
        return path


def make_inputs(num_tokens: int, d_model: int, seed: int = 0) -> torch.Tensor:
    """The hidden state of every token at layer 0 of its step: seeded ``N(0, 1)``, float32 on the CPU. ``[T, D]``"""
    gen = torch.Generator().manual_seed(seed + 104729)
    return torch.randn(num_tokens, d_model, generator=gen)


def token_gates(workload: Workload) -> np.ndarray:
    """Gate weight of each token's k-th expert at each layer: the trace's gates, else ``1 / top_k``. ``[T, L, K]``"""
    if workload.gates is not None:
        return workload.gates.astype(np.float32)
    return np.full(workload.experts.shape, 1.0 / workload.top_k, np.float32)


# --------------------------------------------------------------------------------------------------------------
# Device-side math (shared with calibrate, so calibration times the engine's own code)
# --------------------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------------------
# Streams and events, and their synchronous host stand-ins
# --------------------------------------------------------------------------------------------------------------


class _HostStamp:
    """A CPU 'event': ``record`` reads the clock (ops before it have finished: the CPU runs synchronously)."""

    __slots__ = ("t",)

    def __init__(self) -> None:
        self.t = float("nan")

    def record(self, stream=None) -> None:
        self.t = time.perf_counter()


class _HostStream:
    """A CPU 'stream': work is already done when issued, so waiting is a no-op."""

    def wait_event(self, event) -> None:
        pass


def _stamp_ms(origin, ev) -> float:
    if isinstance(ev, _HostStamp):
        return (ev.t - origin.t) * 1e3
    return float(origin.elapsed_time(ev))


# --------------------------------------------------------------------------------------------------------------
# The engine
# --------------------------------------------------------------------------------------------------------------


@dataclass
class _Prepared:
    """Everything a run of one (plan, workload) needs, built before timing."""

    plan: Plan
    workload: Workload
    T: int  # tokens the plan covers
    G: int  # layer-steps
    out: torch.Tensor  # [T, D] residual stream = outputs
    x: torch.Tensor  # [T, D] experts' input of the current layer
    inputs: torch.Tensor  # [T, D] layer-0 hidden states (device, engine dtype)
    load_dst: list  # per LOAD: device slot view [numel]
    load_src: list  # per LOAD: pinned host view [numel]
    work: list  # per COMPUTE: list of work items
    nm_args: list  # per layer-step: (h view, x view, Wn^T)
    comp_range: np.ndarray  # [G + 1]: computes of layer-step g are comp_range[g]:comp_range[g + 1]
    early: list  # per layer-step: (lo, hi) LOADs issued before its NON-MoE op
    late: list  # per COMPUTE: (lo, hi) LOADs issued right before it
    trailing: tuple  # LOADs issued after the last COMPUTE
    load_wait_pos: np.ndarray  # [N]: compute-stream position a LOAD waits on, -1 none
    comp_wait_load: np.ndarray  # [M]: LOAD a COMPUTE waits on, -1 none
    pos_nonmoe: np.ndarray  # [G]
    pos_comp: np.ndarray  # [M]
    reset_resident: bool  # a LOAD overwrites a preloaded slot: reload them before each repeat
    given_inputs: torch.Tensor | None = None
    programs: dict = field(default_factory=dict)


@dataclass
class _Program:
    """Events of one run mode (timeline or lean) laid out per operation."""

    timeline: bool
    load_ops: list  # per LOAD: (dst, src, wait event, start, end)
    nm_ops: list  # per layer-step: (h, x, wn_t, start, end)
    comp_ops: list  # per COMPUTE: (ready, wait event, start, end, work)
    origin: object


class OffloadEngine:
    """Runs plans on a device with ``cache_experts`` expert slots.

    ``OffloadEngine(model, cache_experts, weights=None, dtype=None, device=None, seed=0, ffn="auto")``:
    ``weights`` default to :meth:`ExpertWeights.random` (``seed``, ``dtype`` default ``model.dtype``); ``device``
    defaults to ``cuda`` when available; ``ffn`` is ``"auto"`` (grouped where it runs without a host sync, else
    loop), ``"grouped"`` or ``"loop"``.
    """

    def __init__(self, model: ModelSpec, cache_experts: int, *, weights: ExpertWeights | None = None,
                 dtype: str | torch.dtype | None = None, device: str | torch.device | None = None, seed: int = 0,
                 ffn: str = "auto", input_seed: int = 0) -> None:
        if cache_experts < 1:
            raise ValueError(f"engine: cache_experts must be >= 1, got {cache_experts}")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.cuda = self.device.type == "cuda"
        if self.cuda and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        if weights is None:
            weights = ExpertWeights.random(model, dtype, seed, init_device=self.device.type if self.cuda else "cpu")
        elif dtype is not None and torch_dtype(dtype) != weights.dtype:
            raise ValueError(f"engine: dtype {dtype} differs from the weights' {weights.dtype}")
        diff = _same_shape(model, weights.model)
        if diff:
            raise ValueError(f"engine: model {model.name} and weights of {weights.model.name} differ ({diff})")
        self.model = model
        self.weights = weights
        self.dtype = weights.dtype
        self.cache_experts = int(cache_experts)
        self.input_seed = input_seed
        if ffn == "auto":
            ok, _why = grouped_mm_supported(self.device, self.dtype)
            ffn = "grouped" if ok and self.cuda else "loop"
        elif ffn == "grouped":
            ok, why = grouped_mm_supported(self.device, self.dtype)
            if not ok:
                raise ValueError(f"engine: ffn='grouped' is not available here: {why}")
        elif ffn != "loop":
            raise ValueError(f"engine: ffn must be 'auto', 'grouped' or 'loop', got {ffn!r}")
        self.ffn = ffn
        numel = expert_numel(model)
        self.slab = torch.empty(self.cache_experts, numel, dtype=self.dtype, device=self.device)  # [C, numel]
        self.kernels = ExpertKernels(model, self.slab, ffn)
        self.wn_t = weights.nonmoe.to(self.device, self.dtype).transpose(1, 2)  # [L, D, D]: Wn^T per layer
        if self.cuda:
            self.compute_stream = torch.cuda.Stream(self.device)
            self.copy_stream = torch.cuda.Stream(self.device)
        else:
            self.compute_stream = _HostStream()
            self.copy_stream = _HostStream()
        self._prepared: dict = {}

    @property
    def bytes_per_expert(self) -> int:
        return self.weights.bytes_per_expert

    # ---------------------------------------------------------------------------------------------------------
    def prepare(self, plan: Plan, workload: Workload, inputs: torch.Tensor | None = None,
                check: bool = True) -> _Prepared:
        """Validate the plan against the workload and build every tensor and list a run needs (cached)."""
        key = (id(plan), id(workload), None if inputs is None else id(inputs), check)
        hit = self._prepared.get(key)
        if hit is not None and hit.plan is plan and hit.workload is workload and hit.given_inputs is inputs:
            return hit
        m = self.model
        L, E, K = m.moe_layers, m.experts, m.top_k
        for what, spec in (("plan", plan.model), ("workload", workload.model)):
            diff = _same_shape(m, spec)
            if diff:
                raise PlanError(f"engine: {what} model {spec.name} differs from the engine's {m.name} ({diff})")
        if plan.layers != L or workload.layers != L:
            raise PlanError(f"engine: plan has {plan.layers} layers, workload {workload.layers}, engine {L}")
        if plan.steps > workload.steps:
            raise PlanError(f"engine: plan covers {plan.steps} steps, workload has only {workload.steps}")
        if plan.cache_experts > self.cache_experts:
            raise PlanError(f"engine: plan {plan.strategy} needs {plan.cache_experts} slots, the engine has "
                            f"{self.cache_experts}; build OffloadEngine(..., cache_experts={plan.cache_experts})")
        N, M, U = plan.num_loads, plan.num_computes, int(plan.use_gid.shape[0])
        for name, arr in (("load_slot", plan.load_slot), ("use_slot", plan.use_slot)):
            if arr.size and (arr.min() < 0 or arr.max() >= self.cache_experts):
                raise PlanError(f"engine: plan {plan.strategy} {name} out of range 0..{self.cache_experts - 1}")
        for name, arr in (("load_gid", plan.load_gid), ("use_gid", plan.use_gid),
                          ("resident_at_start", plan.resident_at_start)):
            if arr.size and (arr.min() < 0 or arr.max() >= L * E):
                raise PlanError(f"engine: plan {plan.strategy} {name} out of range 0..{L * E - 1}")
        if plan.resident_at_start.shape[0] > self.cache_experts:
            raise PlanError(f"engine: plan preloads {plan.resident_at_start.shape[0]} experts into "
                            f"{self.cache_experts} slots")
        G = plan.steps * L
        if M and (plan.comp_ls.min() < 0 or plan.comp_ls.max() >= G):
            raise PlanError(f"engine: plan {plan.strategy} has a COMPUTE outside layer-steps 0..{G - 1}")
        if check:
            check_plan(plan)
        else:
            check_structure(plan)
        lb = plan.load_before.astype(np.int64)
        comp_ls = plan.comp_ls.astype(np.int64)
        bad = np.nonzero(plan.load_gate >= G)[0]
        if bad.size:
            raise PlanError(f"engine: LOAD {int(bad[0])} is gated on layer-step {int(plan.load_gate[bad[0]])} "
                            f"beyond the plan's {G}")
        issue_ls = np.full(N, G - 1, np.int64)  # [N]: layer-step whose COMPUTE a LOAD is issued before
        before_comp = lb < M
        issue_ls[before_comp] = comp_ls[lb[before_comp]]
        late_gate = plan.load_gate > issue_ls
        if late_gate.any():
            n = int(np.nonzero(late_gate)[0][0])
            raise PlanError(f"engine: LOAD {n} is gated on the NON-MoE op of layer-step {int(plan.load_gate[n])} "
                            f"but issued before layer-step {int(issue_ls[n])} runs (the routing would not exist)")

        T = int(workload.step_offsets[plan.steps])
        gates_np = token_gates(workload)
        # ---- token rows of every use, in slot order within each COMPUTE ------------------------------------------
        rows_parts, gate_parts = [], []
        use_order = np.empty(U, np.int64)  # uses of each compute sorted by slot
        use_rows_off = np.zeros(U + 1, np.int64)  # rows of use use_order[i] are rows[off[i]:off[i+1]]
        cover = np.zeros((T, L, K), np.int32)
        pos = 0
        for c in range(M):
            u0, u1 = int(plan.comp_offsets[c]), int(plan.comp_offsets[c + 1])
            ls = int(comp_ls[c])
            s, layer = divmod(ls, L)
            a, b = int(workload.step_offsets[s]), int(workload.step_offsets[s + 1])
            rows = np.arange(a, b)
            item = int(plan.comp_item[c])
            if item >= 0:
                rows = rows[workload.item[a:b] == item]
            ex = workload.experts[rows, layer, :].astype(np.int64).ravel()  # [n * K]
            flat_t = np.repeat(rows, K)
            flat_k = np.tile(np.arange(K), rows.shape[0])
            order = np.argsort(ex, kind="stable")
            se = ex[order]
            slots = plan.use_slot[u0:u1].astype(np.int64)
            srt = np.argsort(slots, kind="stable")
            dup = np.nonzero(np.diff(slots[srt]) == 0)[0]
            if dup.size:
                raise PlanError(f"engine: COMPUTE {c} uses slot {int(slots[srt][dup[0]])} for two experts")
            use_order[u0:u1] = u0 + srt
            e_of_use = plan.use_gid[u0:u1].astype(np.int64) - layer * E
            if np.any((e_of_use < 0) | (e_of_use >= E)):
                i = int(np.nonzero((e_of_use < 0) | (e_of_use >= E))[0][0])
                raise PlanError(f"engine: COMPUTE {c} (layer {layer}) uses gid {int(plan.use_gid[u0 + i])}, "
                                f"which is not an expert of layer {layer}")
            lo = np.searchsorted(se, e_of_use, "left")
            hi = np.searchsorted(se, e_of_use, "right")
            cnt = hi - lo
            wrong = np.nonzero(cnt != plan.use_tokens[u0:u1])[0]
            if wrong.size:
                i = int(wrong[0])
                raise PlanError(f"engine: COMPUTE {c} (step {s}, layer {layer}, item {item}): expert "
                                f"{int(e_of_use[i])} gets {int(cnt[i])} tokens in the workload but "
                                f"{int(plan.use_tokens[u0 + i])} in the plan")
            for i, j in enumerate(srt):
                sel = order[lo[j]:hi[j]]  # entries routed to this expert, in token order
                t_rows, t_k = flat_t[sel], flat_k[sel]
                rows_parts.append(t_rows)
                gate_parts.append(gates_np[t_rows, layer, t_k])
                cover[t_rows, layer, t_k] += 1
                pos += t_rows.shape[0]
                use_rows_off[u0 + i + 1] = pos
        if check and T:
            if M == 0 and T:
                raise PlanError(f"engine: plan {plan.strategy} has no COMPUTE for {T} tokens")
            bad = np.argwhere(cover != 1)
            if bad.size:
                t, layer, k = (int(v) for v in bad[0])
                s = int(np.searchsorted(workload.step_offsets, t, "right") - 1)
                raise PlanError(f"engine: plan {plan.strategy}: token {t} (step {s}) expert "
                                f"{int(workload.experts[t, layer, k])} at layer {layer} is computed "
                                f"{int(cover[t, layer, k])} times (must be once)")
        rows_np = np.concatenate(rows_parts) if rows_parts else np.zeros(0, np.int64)
        gates_all = np.concatenate(gate_parts) if gate_parts else np.zeros(0, np.float32)

        # ---- device tensors: one allocation each, per-op views ------------------------------------------------
        dev, dt = self.device, self.dtype
        rows_t = torch.from_numpy(rows_np.astype(np.int64)).to(dev)  # [R]
        gate_t = torch.from_numpy(gates_all.astype(np.float32)).to(dev, dt).unsqueeze(1)  # [R, 1]
        max_rows = 0
        work: list[list] = []
        offs_np: list[np.ndarray] = []
        chunk_specs: list[list] = []
        for c in range(M):
            u0, u1 = int(plan.comp_offsets[c]), int(plan.comp_offsets[c + 1])
            if self.ffn == "grouped":
                max_rows = max(max_rows, int(use_rows_off[u1] - use_rows_off[u0]))  # staged per COMPUTE
            elif u1 > u0:
                max_rows = max(max_rows, int(plan.use_tokens[u0:u1].max()))  # staged per expert
            if self.ffn == "grouped":
                uo = use_order[u0:u1]
                slots_sorted = plan.use_slot[uo].astype(np.int64)
                counts = np.diff(use_rows_off[u0:u1 + 1])
                nz = counts > 0  # experts without tokens launch nothing
                idx = np.nonzero(nz)[0]
                specs = []
                for (i, j, slo, shi, offs) in chunk_slots(slots_sorted[nz], counts[nz]):
                    ra, rb = int(use_rows_off[u0 + idx[i]]), int(use_rows_off[u0 + idx[j - 1] + 1])
                    specs.append((ra, rb, slo, shi, len(offs_np)))
                    offs_np.append(offs)
                chunk_specs.append(specs)
        self.kernels.ensure_capacity(max(max_rows, 1))
        if self.ffn == "grouped":
            offs_off = np.concatenate([[0], np.cumsum([o.shape[0] for o in offs_np])]).astype(np.int64)
            offs_t = torch.from_numpy(np.concatenate(offs_np) if offs_np else np.zeros(0, np.int32)).to(dev)
            for c in range(M):
                work.append([self.kernels.chunk_work(rows_t[ra:rb], gate_t[ra:rb], slo, shi,
                                                     offs_t[offs_off[k]:offs_off[k + 1]])
                             for (ra, rb, slo, shi, k) in chunk_specs[c]])
        else:
            for c in range(M):
                u0, u1 = int(plan.comp_offsets[c]), int(plan.comp_offsets[c + 1])
                items = []
                for i in range(u0, u1):
                    ra, rb = int(use_rows_off[i]), int(use_rows_off[i + 1])
                    if rb > ra:
                        items.append(self.kernels.use_work(rows_t[ra:rb], gate_t[ra:rb],
                                                           int(plan.use_slot[use_order[i]])))
                work.append(items)

        D = m.d_model
        out = torch.empty(T, D, device=dev, dtype=dt)  # [T, D]
        x = torch.empty(T, D, device=dev, dtype=dt)  # [T, D]
        given_inputs = inputs
        if inputs is None:
            inputs = make_inputs(workload.num_tokens, D, self.input_seed)
        if inputs.shape[0] < T or inputs.shape[1] != D:
            raise PlanError(f"engine: inputs have shape {list(inputs.shape)}, need at least [{T}, {D}]")
        inputs_dev = inputs[:T].to(dev, dt)
        nm_args = []
        for g in range(G):
            s, layer = divmod(g, L)
            a, b = int(workload.step_offsets[s]), int(workload.step_offsets[s + 1])
            nm_args.append((out[a:b], x[a:b], self.wn_t[layer]))
        comp_range = np.searchsorted(comp_ls, np.arange(G + 1), "left").astype(np.int64)  # [G + 1]
        load_lo = np.searchsorted(lb, np.arange(M + 1), "left")
        load_hi = np.searchsorted(lb, np.arange(M + 1), "right")
        early = [(0, 0)] * G
        late = []
        for c in range(M):
            lo, hi = int(load_lo[c]), int(load_hi[c])
            g = int(comp_ls[c])
            if c == comp_range[g]:
                # The longest prefix decided before this layer-step goes ahead of its NON-MoE op.
                k = lo
                while k < hi and plan.load_gate[k] < g:
                    k += 1
                early[g] = (lo, k)
                lo = k
            late.append((lo, hi))
        trailing = (int(load_lo[M]), int(load_hi[M]))
        # Compute-stream positions in issue order: NON-MoE(g) precedes the computes of g.
        pos_nonmoe = np.arange(G) + comp_range[:G]
        pos_comp = comp_ls + 1 + np.arange(M)
        # The compute-stream position each LOAD must wait for: its slot's last reader or its gate, the later one.
        need = np.full(N, -1, np.int64)
        w = plan.load_wait.astype(np.int64)
        gt = plan.load_gate.astype(np.int64)
        need[w >= 0] = pos_comp[w[w >= 0]]
        need[gt >= 0] = np.maximum(need[gt >= 0], pos_nonmoe[gt[gt >= 0]])
        load_wait_pos = np.full(N, -1, np.int64)
        waited = -1
        for n in range(N):
            if need[n] > waited:
                load_wait_pos[n] = need[n]
                waited = int(need[n])
        comp_wait_load = np.full(M, -1, np.int64)
        waited = -1
        for c in range(M):
            u0, u1 = int(plan.comp_offsets[c]), int(plan.comp_offsets[c + 1])
            mx = int(plan.use_load[u0:u1].max()) if u1 > u0 else -1
            if mx > waited:
                comp_wait_load[c] = mx
                waited = mx
        resident = plan.resident_at_start
        reset = bool(resident.shape[0] and N and (plan.load_slot < resident.shape[0]).any())
        host = self.weights.host
        prep = _Prepared(plan, workload, T, G, out, x, inputs_dev,
                         [self.slab[int(s)] for s in plan.load_slot], [host[int(gd)] for gd in plan.load_gid],
                         work, nm_args, comp_range, early, late, trailing, load_wait_pos, comp_wait_load,
                         pos_nonmoe, pos_comp, reset, given_inputs)
        self._load_resident(plan)
        self._prepared = {key: prep}  # one plan at a time keeps device memory bounded
        return prep

    def _load_resident(self, plan: Plan) -> None:
        """Copy ``resident_at_start`` gids into slots 0..n-1 (untimed)."""
        res = plan.resident_at_start
        if not res.shape[0]:
            return
        host = self.weights.host
        if np.array_equal(res, np.arange(res.shape[0])):
            self.slab[:res.shape[0]].copy_(host[:res.shape[0]])  # gpu_only: one contiguous copy
        else:
            for s, gid in enumerate(res.tolist()):
                self.slab[s].copy_(host[gid])
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def _program(self, prep: _Prepared, timeline: bool) -> _Program:
        prog = prep.programs.get(timeline)
        if prog is not None:
            return prog
        N, M, G = prep.plan.num_loads, prep.plan.num_computes, prep.G
        if self.cuda:
            def timing():
                return torch.cuda.Event(enable_timing=True)

            def dep():
                return torch.cuda.Event()
        else:
            def timing():
                return _HostStamp()

            def dep():
                return None
        pos_ev: dict[int, object] = {}  # compute-stream position -> event recorded after that op
        load_end: dict[int, object] = {}
        if timeline:
            nm_se = [(timing(), timing()) for _ in range(G)]
            comp_rse = [(timing() if self.cuda else None, timing(), timing()) for _ in range(M)]
            ld_se = [(timing(), timing()) for _ in range(N)]
            for g in range(G):
                pos_ev[int(prep.pos_nonmoe[g])] = nm_se[g][1]
            for c in range(M):
                pos_ev[int(prep.pos_comp[c])] = comp_rse[c][2]
            for n in range(N):
                load_end[n] = ld_se[n][1]
        else:
            # Lean: only the events some wait needs (none on the CPU, where every op has finished when issued).
            if self.cuda:
                for p in set(prep.load_wait_pos[prep.load_wait_pos >= 0].tolist()):
                    pos_ev[int(p)] = dep()
                for n in set(prep.comp_wait_load[prep.comp_wait_load >= 0].tolist()):
                    load_end[int(n)] = dep()
            nm_se = [(None, pos_ev.get(int(prep.pos_nonmoe[g]))) for g in range(G)]
            comp_rse = [(None, None, pos_ev.get(int(prep.pos_comp[c]))) for c in range(M)]
            ld_se = [(None, load_end.get(n)) for n in range(N)]
        cuda = self.cuda
        load_ops = []
        for n in range(N):
            p = int(prep.load_wait_pos[n])
            wait = pos_ev.get(p) if (cuda and p >= 0) else None
            load_ops.append((prep.load_dst[n], prep.load_src[n], wait, ld_se[n][0], ld_se[n][1]))
        nm_ops = [(*prep.nm_args[g], nm_se[g][0], nm_se[g][1]) for g in range(G)]
        comp_ops = []
        for c in range(M):
            n = int(prep.comp_wait_load[c])
            wait = load_end.get(n) if (cuda and n >= 0) else None
            ready, start, end = comp_rse[c]
            comp_ops.append((ready if wait is not None else None, wait, start, end, prep.work[c]))
        prog = _Program(timeline, load_ops, nm_ops, comp_ops, timing() if timeline else None)
        prep.programs[timeline] = prog
        return prog

    # ---------------------------------------------------------------------------------------------------------
    def _issue(self, prep: _Prepared, prog: _Program) -> None:
        """Issue every operation of the plan in host issue order (the hot path: no allocation, no host sync)."""
        cs, ks = self.compute_stream, self.copy_stream
        set_stream = torch.cuda.set_stream if self.cuda else None
        load_ops, nm_ops, comp_ops = prog.load_ops, prog.nm_ops, prog.comp_ops
        kernels, x, out = self.kernels, prep.x, prep.out
        nonmoe = kernels.nonmoe
        run = kernels.run

        def loads(lo: int, hi: int) -> None:
            if set_stream is not None:
                set_stream(ks)
            for i in range(lo, hi):
                dst, src, wait, start, end = load_ops[i]
                if wait is not None:
                    ks.wait_event(wait)
                if start is not None:
                    start.record(ks)
                dst.copy_(src, non_blocking=True)
                if end is not None:
                    end.record(ks)
            if set_stream is not None:
                set_stream(cs)

        comp_range, early, late = prep.comp_range, prep.early, prep.late
        for g in range(prep.G):
            lo, hi = early[g]
            if hi > lo:
                loads(lo, hi)
            h, xs, wn_t, start, end = nm_ops[g]
            if start is not None:
                start.record(cs)
            nonmoe(h, xs, wn_t)
            if end is not None:
                end.record(cs)
            for c in range(int(comp_range[g]), int(comp_range[g + 1])):
                lo, hi = late[c]
                if hi > lo:
                    loads(lo, hi)
                ready, wait, start, end, work = comp_ops[c]
                if ready is not None:
                    ready.record(cs)
                if wait is not None:
                    cs.wait_event(wait)
                if start is not None:
                    start.record(cs)
                run(work, x, out)
                if end is not None:
                    end.record(cs)
        lo, hi = prep.trailing
        if hi > lo:
            loads(lo, hi)

    def _sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def _reset(self, prep: _Prepared) -> None:
        """Bring the device to the plan's start state (untimed): preloaded slots, layer-0 hidden states."""
        if prep.reset_resident:
            self._load_resident(prep.plan)
        prep.out.copy_(prep.inputs)
        self._sync()

    def run(self, plan: Plan, workload: Workload, repeats: int = 1, warmup: int = 1, timeline: bool = True,
            inputs: torch.Tensor | None = None, check: bool = True) -> tuple[torch.Tensor, Timeline]:
        """Execute ``plan`` ``warmup + repeats`` times; time the ``repeats``.

        Returns the final hidden state of every token the plan covers (float32, CPU, ``[T, D]``) and the timeline of
        the median repeat (by wall time). ``timeline=False`` records only the events dependencies need (lean runs:
        the Timeline arrays are NaN). ``check`` runs :func:`check_plan` and the coverage checks.
        """
        if repeats < 1 or warmup < 0:
            raise ValueError(f"engine: repeats must be >= 1 and warmup >= 0, got {repeats}, {warmup}")
        prep = self.prepare(plan, workload, inputs, check)
        prog = self._program(prep, timeline)
        walls, issues, stamps = [], [], []
        prev_stream = torch.cuda.current_stream(self.device) if self.cuda else None
        try:
            if self.cuda:
                torch.cuda.set_stream(self.compute_stream)
            for i in range(warmup + repeats):
                self._reset(prep)
                if i == warmup and self.cuda:
                    torch.cuda.reset_peak_memory_stats(self.device)
                with torch.inference_mode():
                    t0 = time.perf_counter()
                    if prog.origin is not None:
                        prog.origin.record(self.compute_stream)
                    self._issue(prep, prog)
                    t1 = time.perf_counter()
                    self._sync()
                    t2 = time.perf_counter()
                if i >= warmup:
                    walls.append((t2 - t0) * 1e3)
                    issues.append((t1 - t0) * 1e3)
                    if timeline:
                        stamps.append(self._read_timeline(prep, prog))
        finally:
            if self.cuda:
                torch.cuda.set_stream(prev_stream)
        med = statistics.median(walls)
        pick = int(np.argmin([abs(w - med) for w in walls]))
        info = self._info(prep, walls, issues, warmup, timeline)
        if timeline:
            arrays = stamps[pick]
        else:
            nan = np.full
            arrays = (nan(plan.num_loads, np.nan), nan(plan.num_loads, np.nan), nan(plan.num_computes, np.nan),
                      nan(plan.num_computes, np.nan), nan(prep.G, np.nan), nan(prep.G, np.nan),
                      nan(plan.num_computes, np.nan))
        tl = Timeline(*arrays[:6], executor="engine", info=info)
        if timeline:
            comp_ready = arrays[6]
            info["copy_busy_ms"] = tl.copy_busy_ms
            info["compute_busy_ms"] = tl.compute_busy_ms
            info["stall_ms"] = tl.stall_ms(comp_ready)
            info["comp_ready"] = comp_ready
            info["step_ms"] = self._step_ms(prep, tl)
        else:
            info["copy_busy_ms"] = info["compute_busy_ms"] = info["stall_ms"] = float("nan")
        outputs = prep.out.float().cpu()
        return outputs, tl

    def _read_timeline(self, prep: _Prepared, prog: _Program) -> tuple:
        o = prog.origin
        ls = np.array([_stamp_ms(o, op[3]) for op in prog.load_ops])
        le = np.array([_stamp_ms(o, op[4]) for op in prog.load_ops])
        ns = np.array([_stamp_ms(o, op[3]) for op in prog.nm_ops])
        ne = np.array([_stamp_ms(o, op[4]) for op in prog.nm_ops])
        cs = np.array([_stamp_ms(o, op[2]) for op in prog.comp_ops])
        ce = np.array([_stamp_ms(o, op[3]) for op in prog.comp_ops])
        # Ready = when the compute stream reached the COMPUTE, before its wait on a LOAD (start when no wait).
        cr = np.array([_stamp_ms(o, op[0]) if op[0] is not None else np.nan for op in prog.comp_ops])
        cr = np.where(np.isnan(cr), cs, cr)
        f = np.float64
        return (ls.astype(f), le.astype(f), cs.astype(f), ce.astype(f), ns.astype(f), ne.astype(f), cr.astype(f))

    def _step_ms(self, prep: _Prepared, tl: Timeline) -> list[float]:
        """Per step: end of its last op on the compute stream minus the previous step's."""
        L = self.model.moe_layers
        ends = []
        for s in range(prep.plan.steps):
            g0, g1 = s * L, (s + 1) * L
            e = float(tl.nonmoe_end[g0:g1].max()) if g1 > g0 else 0.0
            c0, c1 = int(prep.comp_range[g0]), int(prep.comp_range[g1])
            if c1 > c0:
                e = max(e, float(tl.comp_end[c0:c1].max()))
            ends.append(e)
        return np.diff(np.concatenate([[0.0], ends])).tolist()

    def _info(self, prep: _Prepared, walls: list, issues: list, warmup: int, timeline: bool) -> dict:
        plan = prep.plan
        med = statistics.median(walls)
        if self.cuda:
            peak = int(torch.cuda.max_memory_allocated(self.device))
            peak_src = "torch.cuda.max_memory_allocated"
        else:
            k = self.kernels
            own = [self.slab, self.wn_t, prep.out, prep.x, prep.inputs, k.xin] + \
                ([k.hid, k.y] if k.path == "loop" else [])
            peak = int(sum(t.numel() * t.element_size() for t in own))
            peak_src = "engine tensors (cpu run)"
        return {
            "wall_ms": med,
            "wall_ms_repeats": list(walls),
            "wall_ms_per_step": med / max(plan.steps, 1),
            "issue_ms": statistics.median(issues),
            "repeats": len(walls),
            "warmup": warmup,
            "timeline": timeline,
            "peak_device_bytes": peak,
            "peak_device_bytes_source": peak_src,
            "bytes_per_expert": self.bytes_per_expert,
            "bytes_h2d": plan.num_loads * self.bytes_per_expert,
            "loads": plan.num_loads,
            "computes": plan.num_computes,
            "layer_steps": prep.G,
            "tokens": prep.T,
            "device": torch.cuda.get_device_name(self.device) if self.cuda else "cpu",
            "dtype": str(self.dtype).replace("torch.", ""),
            "ffn_path": self.ffn,
            "pinned_host": self.weights.pinned,
        }


# --------------------------------------------------------------------------------------------------------------
# The dense reference
# --------------------------------------------------------------------------------------------------------------


def _ffn_reference(model: ModelSpec, mats: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    if model.activation == "relu":
        return torch.relu(x @ mats["wi"].T) @ mats["wo"].T
    return (F.silu(x @ mats["gate"].T) * (x @ mats["up"].T)) @ mats["down"].T


def dense_reference(model: ModelSpec, weights: ExpertWeights, workload: Workload, dtype: torch.dtype = torch.float32,
                    *, steps: int | None = None, inputs: torch.Tensor | None = None, input_seed: int = 0,
                    device: str | torch.device = "cpu") -> torch.Tensor:
    """Every expert resident, the same math, no plan: the final hidden state of each token of the first ``steps``
    steps (default all), float32 on the CPU, ``[T, D]``.

    Plain code on purpose (no slots, no index preparation): tokens are independent, so all tokens of the workload
    go through each layer at once, expert by expert.
    """
    diff = _same_shape(model, weights.model)
    if diff:
        raise ValueError(f"dense_reference: model {model.name} and weights of {weights.model.name} differ ({diff})")
    steps = workload.steps if steps is None else steps
    T = int(workload.step_offsets[steps])
    L, E, D = model.moe_layers, model.experts, model.d_model
    if inputs is None:
        inputs = make_inputs(workload.num_tokens, D, input_seed)
    h = inputs[:T].to(device, dtype).clone()  # [T, D]
    gates = torch.from_numpy(token_gates(workload)[:T]).to(device, dtype)  # [T, L, K]
    for layer in range(L):
        wn = weights.nonmoe[layer].to(device, dtype)  # [D, D]
        x = F.rms_norm(h, (D,), eps=RMS_EPS) @ wn.T  # [T, D]
        h = h + x
        ex = workload.experts[:T, layer, :]  # [T, K]
        for e in np.unique(ex).tolist():
            t_idx, k_idx = np.nonzero(ex == e)
            mats = {k: v.to(device, dtype) for k, v in weights.matrices(layer * E + e).items()}
            ti = torch.from_numpy(t_idx).to(device)
            y = _ffn_reference(model, mats, x[ti])  # [n, D]
            h.index_add_(0, ti, y * gates[ti, layer, torch.from_numpy(k_idx).to(device)].unsqueeze(1))
    return h.float().cpu()


def max_rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """``max |out - ref| / max |ref|``: one number per run, scale-free, dominated by the worst token."""
    if out.shape != ref.shape:
        raise ValueError(f"outputs {list(out.shape)} and reference {list(ref.shape)} differ in shape")
    den = float(ref.abs().max())
    return float((out.float() - ref.float()).abs().max()) / (den if den > 0 else 1.0)
