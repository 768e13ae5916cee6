"""Model presets: the shape of each MoE model's experts, looked up by name.

Figures are from the models' Hugging Face configs (see each preset's comment). ``expert_bytes`` is derived, never
typed: ``matrices * d_model * d_ff * bytes_per_element``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

_DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}


@dataclass(frozen=True)
class ModelSpec:
    """The MoE part of a model: what an offloading engine moves and computes.

    ``moe_layers`` counts the MoE layers one decode step walks through in the artifact's workloads.
    ``activation`` is ``"relu"`` (two matrices, wi and wo) or ``"swiglu"`` (three: gate, up, down).
    """

    name: str
    moe_layers: int
    experts: int
    top_k: int
    d_model: int
    d_ff: int
    activation: str
    dtype: str = "bfloat16"
    shared_experts: int = 0

    def __post_init__(self) -> None:
        if self.activation not in ("relu", "swiglu"):
            raise ValueError(f"model {self.name}: activation must be 'relu' or 'swiglu', got {self.activation!r}")
        if self.dtype not in _DTYPE_BYTES:
            raise ValueError(f"model {self.name}: dtype must be one of {sorted(_DTYPE_BYTES)}, got {self.dtype!r}")
        if not 1 <= self.top_k <= self.experts:
            raise ValueError(f"model {self.name}: top_k {self.top_k} must be in 1..{self.experts}")

    @property
    def matrices(self) -> int:
        return 2 if self.activation == "relu" else 3

    @property
    def expert_params(self) -> int:
        return self.matrices * self.d_model * self.d_ff

    @property
    def dtype_bytes(self) -> int:
        return _DTYPE_BYTES[self.dtype]

    @property
    def expert_bytes(self) -> int:
        return self.expert_params * self.dtype_bytes

    @property
    def total_experts(self) -> int:
        """Routed experts over all MoE layers (the offloadable set)."""
        return self.moe_layers * self.experts

    def with_dtype(self, dtype: str) -> ModelSpec:
        return replace(self, dtype=dtype)


PRESETS: dict[str, ModelSpec] = {
    # google/switch-base-128: d_model 768, d_ff 3072, relu, 128 experts, top-1. 12 encoder + 12 decoder blocks with
    # every other block MoE: 6 + 6 = 12 MoE layers, which is how the seed report frames the model. Autoregressive
    # decoding runs only the 6 decoder MoE layers; the artifact walks all 12 per step, as the seed does, and says so.
    # bf16 expert: 2 * 768 * 3072 * 2 B = 9,437,184 B.
    "switch-base-128": ModelSpec("switch-base-128", 12, 128, 1, 768, 3072, "relu"),
    # mistralai/Mixtral-8x7B: 32 MoE layers, 8 experts, top-2, 4096 -> 14336 SwiGLU (arXiv:2401.04088).
    "mixtral-8x7b": ModelSpec("mixtral-8x7b", 32, 8, 2, 4096, 14336, "swiglu"),
    # allenai/OLMoE-1B-7B: 16 MoE layers, 64 experts, top-8, 2048 -> 1024 SwiGLU (arXiv:2409.02060).
    "olmoe-1b-7b": ModelSpec("olmoe-1b-7b", 16, 64, 8, 2048, 1024, "swiglu"),
    # Qwen/Qwen1.5-MoE-A2.7B: 24 MoE layers, 60 routed experts (+4 shared, always resident), top-4, 2048 -> 1408.
    "qwen1.5-moe-a2.7b": ModelSpec("qwen1.5-moe-a2.7b", 24, 60, 4, 2048, 1408, "swiglu", shared_experts=4),
    # deepseek-ai/DeepSeek-V2-Lite: 27 layers, the first dense, so 26 MoE layers; 64 routed (+2 shared), top-6.
    "deepseek-v2-lite": ModelSpec("deepseek-v2-lite", 26, 64, 6, 2048, 1408, "swiglu", shared_experts=2),
}


def get_model(name: str) -> ModelSpec:
    """Look a preset up by name; the error lists the presets."""
    try:
        return PRESETS[name]
    except KeyError:
        raise KeyError(f"unknown model preset {name!r}; presets: {', '.join(PRESETS)}") from None
