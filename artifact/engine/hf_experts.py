"""The routed experts of a ``transformers`` MoE model: where they sit, how one expert is packed into a row of the
engine's host slab, and the device math that runs it from a cache slot.

Layouts (transformers 5.x; ``E`` experts, ``D`` hidden size, ``F`` one expert's hidden width):

- ``fused`` (Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE): ``mlp.experts.gate_up_proj [E, 2F, D]`` (gate rows then up
  rows) and ``down_proj [E, D, F]``, no biases, SiLU. A slab row is ``[gate|up (2F x D), down (D x F)]``: exactly
  the ``swiglu`` layout of :mod:`artifact.engine.weights`, so :class:`~artifact.engine.kernels.ExpertKernels` runs
  it. Qwen2-MoE's shared expert is not routed: it stays in the model, on the device, untouched.
- ``gpt_oss``: ``gate_up_proj [E, D, 2F]`` (stored transposed, gate and up *interleaved*: even columns gate, odd
  up) with ``gate_up_proj_bias [E, 2F]``, ``down_proj [E, F, D]`` with ``down_proj_bias [E, D]``; the clamped
  SwiGLU ``(clamp(up, -l, l) + 1) * g * sigmoid(alpha g)``, ``g = clamp(gate, max=l)``. A slab row is
  ``[gate_up (D x 2F), gate_up_bias (2F), down (F x D), down_bias (D)]``, run by :class:`GptOssKernels` with the
  model's own op order.
- ``switch`` (Switch Transformers): one module per expert, ``mlp.experts.expert_{e}.wi [F, D]`` and ``.wo [D, F]``,
  ReLU. A slab row is ``[wi, wo]``: the ``relu`` layout of ExpertKernels.

The plan's bytes per expert (``ModelSpec.expert_bytes``) count the matrices; gpt-oss's biases (``2F + D`` values, 0.03%
of an expert) are copied with it and counted in the executor's ``bytes_copied``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from artifact.engine.kernels import ExpertKernels
from artifact.models import PRESETS, ModelSpec
from artifact.traces.record import Family, RouterSite, router_sites

_DTYPE_NAMES = {torch.bfloat16: "bfloat16", torch.float16: "float16", torch.float32: "float32"}


@dataclass(frozen=True)
class MoeLayer:
    """One MoE block of the model: its router and the experts module the offload replaces."""

    site: RouterSite
    block: torch.nn.Module  # the MoE block (``...mlp``)
    experts: torch.nn.Module  # its routed experts (``block.experts``)


@dataclass(frozen=True)
class ExpertLayout:
    """How one family's experts are stored in the model and in a slab row."""

    kind: str  # "fused" | "gpt_oss" | "switch"
    experts: int  # E
    d_model: int  # D
    d_ff: int  # F
    dtype: torch.dtype
    alpha: float = 0.0  # gpt-oss clamped SwiGLU
    limit: float = 0.0

    @property
    def numel(self) -> int:
        D, F = self.d_model, self.d_ff
        if self.kind == "gpt_oss":
            return 3 * D * F + 2 * F + D
        return (3 if self.kind == "fused" else 2) * D * F

    @property
    def activation(self) -> str:
        return "relu" if self.kind == "switch" else "swiglu"


def moe_layers(model: torch.nn.Module) -> tuple[Family, list[MoeLayer], list[MoeLayer]]:
    """``(family, planned layers, encoder layers)``: the MoE layers a decoding step runs, in order, and (Switch) the
    encoder's, which run once per prompt. Unsupported models raise ``ValueError`` naming the class."""
    fam, sites = router_sites(model, encoder=True)
    planned, encoder = [], []
    for site in sites:
        block = model.get_submodule(site.block_path)
        experts = getattr(block, "experts", None)
        if experts is None:
            raise ValueError(f"model {type(model).__name__}: MoE block {site.block_path} has no 'experts' module "
                             f"(expected the transformers 5.x layout)")
        (encoder if site.encoder else planned).append(MoeLayer(site, block, experts))
    return fam, planned, encoder


def expert_layout(layer: MoeLayer, config) -> ExpertLayout:
    """The layout of one layer's experts; a layout or activation the engine does not run raises ``ValueError``."""
    ex = layer.experts
    where = f"{layer.site.block_path}.experts ({type(ex).__name__})"
    if hasattr(ex, "expert_0"):
        first = ex.expert_0
        act = getattr(config, "dense_act_fn", "relu")
        if act != "relu" or getattr(config, "is_gated_act", False):
            raise ValueError(f"{where}: expert activation {act!r} is not supported (Switch experts run relu)")
        w = first.wi.weight
        return ExpertLayout("switch", len(ex), int(w.shape[1]), int(w.shape[0]), w.dtype)
    gu, down = getattr(ex, "gate_up_proj", None), getattr(ex, "down_proj", None)
    if not isinstance(gu, torch.Tensor) or not isinstance(down, torch.Tensor) or gu.dim() != 3:
        raise ValueError(f"{where}: no fused gate_up_proj / down_proj tensors; quantized or custom expert modules "
                         f"are not supported")
    if hasattr(ex, "gate_up_proj_bias") or getattr(ex, "is_transposed", False):
        if not hasattr(ex, "alpha") or not hasattr(ex, "limit"):
            raise ValueError(f"{where}: a transposed expert layout that is not gpt-oss's is not supported")
        return ExpertLayout("gpt_oss", int(gu.shape[0]), int(gu.shape[1]), int(gu.shape[2]) // 2, gu.dtype,
                            float(ex.alpha), float(ex.limit))
    if not getattr(ex, "is_concatenated", True) or getattr(ex, "has_bias", False):
        raise ValueError(f"{where}: only concatenated gate|up experts without biases are supported")
    act = getattr(config, "hidden_act", "silu")
    if act != "silu":
        raise ValueError(f"{where}: expert activation {act!r} is not supported (the engine runs SiLU-gated experts)")
    return ExpertLayout("fused", int(gu.shape[0]), int(gu.shape[2]), int(gu.shape[1]) // 2, gu.dtype)


def pack_layer(layer: MoeLayer, lay: ExpertLayout, rows: torch.Tensor) -> None:
    """Copy ``layer``'s experts into ``rows`` (``[E, numel]``, host slab rows of this layer)."""
    ex = layer.experts
    E = lay.experts
    if lay.kind == "switch":
        parts = [torch.stack([ex[f"expert_{e}"].wi.weight.reshape(-1) for e in range(E)]),
                 torch.stack([ex[f"expert_{e}"].wo.weight.reshape(-1) for e in range(E)])]
    elif lay.kind == "gpt_oss":
        parts = [ex.gate_up_proj.reshape(E, -1), ex.gate_up_proj_bias.reshape(E, -1), ex.down_proj.reshape(E, -1),
                 ex.down_proj_bias.reshape(E, -1)]
    else:
        parts = [ex.gate_up_proj.reshape(E, -1), ex.down_proj.reshape(E, -1)]
    for p in parts:
        if p.device.type == "meta":
            raise ValueError(f"{layer.site.block_path}.experts: weights are on the meta device (never loaded)")
    with torch.no_grad():
        if parts[0].device.type == "cuda":
            # One contiguous device-to-host copy per layer (strided host destinations would go through a bounce).
            rows.copy_(torch.cat([p.to(lay.dtype) for p in parts], dim=1))
        else:
            off = 0
            for p in parts:
                n = p.shape[1]
                rows[:, off:off + n].copy_(p)
                off += n
    if rows.shape[1] != lay.numel:
        raise AssertionError(f"packed {rows.shape[1]} values per expert, layout says {lay.numel}")


def model_spec(model: torch.nn.Module, lay: ExpertLayout, layers: int, top_k: int) -> ModelSpec:
    """The MoE part of a live model as a :class:`ModelSpec`: a preset's name when the shape is the preset's (the
    hardware profile's timings and the reports then name it), else ``<model_type>-<L>x<E>-d<D>-f<F>``."""
    dtype = _DTYPE_NAMES.get(lay.dtype)
    if dtype is None:
        raise ValueError(f"expert dtype {lay.dtype} is not supported (bfloat16, float16, float32)")
    shape = (layers, lay.experts, top_k, lay.d_model, lay.d_ff, lay.activation)
    for name, p in PRESETS.items():
        if (p.moe_layers, p.experts, p.top_k, p.d_model, p.d_ff, p.activation) == shape:
            return ModelSpec(name, *shape, dtype=dtype, shared_experts=p.shared_experts)
    mt = getattr(getattr(model, "config", None), "model_type", "moe")
    return ModelSpec(f"{mt}-{layers}x{lay.experts}-d{lay.d_model}-f{lay.d_ff}", *shape, dtype=dtype)


class GptOssKernels:
    """gpt-oss's expert FFN reading slot ``s`` of the device slab, in the model's own op order (so float32 outputs
    equal the resident model's). One expert at a time (the loop path's interface of ExpertKernels)."""

    path = "loop"

    def __init__(self, lay: ExpertLayout, slots: torch.Tensor) -> None:
        D, F = lay.d_model, lay.d_ff
        a, b, c = D * 2 * F, D * 2 * F + 2 * F, D * 2 * F + 2 * F + F * D
        S = slots.shape[0]
        self.w1 = [slots[s, :a].view(D, 2 * F) for s in range(S)]  # each [D, 2F]
        self.b1 = [slots[s, a:b] for s in range(S)]  # [2F]
        self.w2 = [slots[s, b:c].view(F, D) for s in range(S)]  # [F, D]
        self.b2 = [slots[s, c:] for s in range(S)]  # [D]
        self.alpha, self.limit = lay.alpha, lay.limit
        self.dtype = slots.dtype

    def ensure_capacity(self, max_rows: int) -> None:
        pass

    def use_work(self, rows: torch.Tensor, gate: torch.Tensor, slot: int) -> tuple:
        return rows, gate, slot

    def run(self, work: list[tuple], x: torch.Tensor, out: torch.Tensor) -> None:
        lim = self.limit
        for rows, gate, s in work:
            h = x.index_select(0, rows)  # [n, D]
            gu = h @ self.w1[s] + self.b1[s]  # [n, 2F]
            g, u = gu[..., ::2], gu[..., 1::2]
            g = g.clamp(min=None, max=lim)
            u = u.clamp(min=-lim, max=lim)
            y = ((u + 1) * (g * torch.sigmoid(g * self.alpha))) @ self.w2[s] + self.b2[s]  # [n, D]
            out.index_add_(0, rows, (y * gate).to(out.dtype))


def make_kernels(lay: ExpertLayout, spec: ModelSpec, slots: torch.Tensor, path: str):
    """The device math over ``slots [S, numel]``: ExpertKernels for the fused and Switch layouts (``path`` loop or
    grouped), :class:`GptOssKernels` for gpt-oss (loop)."""
    if lay.kind == "gpt_oss":
        return GptOssKernels(lay, slots)
    return ExpertKernels(spec, slots, path)
