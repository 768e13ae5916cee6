"""The model's weights on the host: every routed expert in ONE pinned slab, plus the NON-MoE stand-in matrices.

Every routed expert of every MoE layer lives in one host slab (``ExpertWeights.host``, ``[L * E, numel]``): a single
``torch.empty(total, pin_memory=True)`` when CUDA is available, sliced per expert. Pinning each expert separately
would round every allocation up to a power of two (pytorch #150517, #95823: an 18.9 MB expert costs 32 MB); the one
slab may be rounded once. An expert is contiguous, so one LOAD is one copy of ``bytes_per_expert`` bytes. Layout of
one expert (row-major, in this order):

- ``relu`` (Switch): ``wi [d_ff, d_model]``, ``wo [d_model, d_ff]``; FFN ``wo(relu(wi x))``.
- ``swiglu``: ``gate [d_ff, d_model]``, ``up [d_ff, d_model]``, ``down [d_model, d_ff]``;
  FFN ``down(silu(gate x) * up x)``. ``gate`` and ``up`` are adjacent, so one matmul computes both.

Weights are scaled like an init (``N(0, 1) / sqrt(fan_in)``) so activations stay O(1) through many layers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from artifact.models import ModelSpec

_TORCH_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


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


def shape_difference(a: ModelSpec, b: ModelSpec) -> str | None:
    """None when two specs describe the same MoE tensors, else what differs (names and dtypes may differ)."""
    for attr in ("moe_layers", "experts", "top_k", "d_model", "d_ff", "activation"):
        if getattr(a, attr) != getattr(b, attr):
            return f"{attr} {getattr(a, attr)} vs {getattr(b, attr)}"
    return None


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
        and to :func:`~artifact.engine.reference.dense_reference`.
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
