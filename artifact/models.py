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
    ``activation`` is ``"relu"`` (two matrices, wi and wo) or ``"swiglu"`` (three: gate, up, down; also stands for the
    other gated activations, e.g. gelu-tanh gated, which have the same three matrices and bytes).
    ``top_k`` is the number of experts each token uses in the workload. A preset has its config's top-k; a trace may
    use fewer (a capture run with a reduced ``n_expert_used``): the workload then runs ``with_top_k(trace_top_k)``,
    whose ``native_top_k`` keeps the config's figure (None: ``top_k`` is the native one).
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
    native_top_k: int | None = None

    def __post_init__(self) -> None:
        if self.activation not in ("relu", "swiglu"):
            raise ValueError(f"model {self.name}: activation must be 'relu' or 'swiglu', got {self.activation!r}")
        if self.dtype not in _DTYPE_BYTES:
            raise ValueError(f"model {self.name}: dtype must be one of {sorted(_DTYPE_BYTES)}, got {self.dtype!r}")
        if not 1 <= self.top_k <= self.experts:
            raise ValueError(f"model {self.name}: top_k {self.top_k} must be in 1..{self.experts}")
        if self.native_top_k is not None and not self.top_k <= self.native_top_k <= self.experts:
            raise ValueError(f"model {self.name}: native_top_k {self.native_top_k} must be in "
                             f"{self.top_k}..{self.experts} (top_k {self.top_k})")

    @property
    def config_top_k(self) -> int:
        """The model's own top-k (its config's ``num_experts_per_tok``), whatever the workload uses."""
        return self.top_k if self.native_top_k is None else self.native_top_k

    def with_top_k(self, k: int) -> ModelSpec:
        """The same model routing ``k`` experts per token (``k`` at most the config's top-k)."""
        native = self.config_top_k
        if not 1 <= k <= native:
            raise ValueError(f"model {self.name}: top-{k} is not possible, the model routes top-{native} "
                             f"(a trace may use fewer experts per token than its model, never more)")
        return replace(self, top_k=k, native_top_k=None if k == native else native)

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
    # The models of the real traces (artifact/traces/data/). Experts are modelled in bf16 whatever the checkpoint or
    # the capture stores (the route-csv traces were captured from Q4_K_M GGUF files; their bytes are provenance only).
    # Qwen/Qwen3-30B-A3B config.json: hidden_size 2048, moe_intermediate_size 768, num_experts 128,
    # num_experts_per_tok 8 (norm_topk_prob true), num_hidden_layers 48 with decoder_sparse_step 1 and no
    # mlp_only_layers (every layer MoE), hidden_act silu, bfloat16 (huggingface.co/Qwen/Qwen3-30B-A3B).
    # bf16 expert: 3 * 2048 * 768 * 2 B = 9,437,184 B.
    "qwen3-30b-a3b": ModelSpec("qwen3-30b-a3b", 48, 128, 8, 2048, 768, "swiglu"),
    # google/gemma-4-26B-A4B (-it): 30 layers, every one MoE, hidden 2816, expert_feed_forward_length 704, 128
    # experts, top-8 (GGUF metadata gemma4.block_count 30, embedding_length 2816, expert_count 128,
    # expert_feed_forward_length 704, expert_used_count 8, feed_forward_length 2112: ollama.com/library/gemma4,
    # matching huggingface.co/google/gemma-4-26B-A4B-it config.json). Every layer also runs a dense MLP (2112) in
    # parallel with the experts: it is resident non-expert weight, not a routed expert, so not counted here. The
    # experts are gelu-tanh gated: three matrices like SwiGLU. bf16 expert: 3 * 2816 * 704 * 2 B = 11,894,784 B.
    "gemma-4-26b-a4b": ModelSpec("gemma-4-26b-a4b", 30, 128, 8, 2816, 704, "swiglu"),
    # openai/gpt-oss-120b config.json: num_hidden_layers 36 (every layer MoE), num_local_experts 128,
    # num_experts_per_tok 4, hidden_size 2880, intermediate_size 2880 (huggingface.co/openai/gpt-oss-120b; the
    # original/config.json says experts_per_token 4, swiglu_limit 7.0). Experts: a clamped SwiGLU with biases,
    # gate_up [2 * 2880, 2880] + down [2880, 2880] = three matrices; the biases (8,640 values, 0.03%) are left out.
    # MXFP4 on disk, bf16 after dequantisation. bf16 expert: 3 * 2880 * 2880 * 2 B = 49,766,400 B.
    "gpt-oss-120b": ModelSpec("gpt-oss-120b", 36, 128, 4, 2880, 2880, "swiglu"),
    # openai/gpt-oss-20b config.json: the same expert shape, num_local_experts 32, num_experts_per_tok 4,
    # num_hidden_layers 24 (huggingface.co/openai/gpt-oss-20b). bf16 expert: 49,766,400 B.
    "gpt-oss-20b": ModelSpec("gpt-oss-20b", 24, 32, 4, 2880, 2880, "swiglu"),
    # deepseek-ai/DeepSeek-V3 (inference/configs/config_671B.json and config.json): dim 7168, moe_inter_dim 2048,
    # n_layers 61 of which n_dense_layers (first_k_dense_replace) 3, so 58 MoE layers; n_routed_experts 256,
    # n_activated_experts 8, n_shared_experts 1 (always resident); FP8 checkpoint, modelled in bf16.
    # bf16 expert: 3 * 7168 * 2048 * 2 B = 88,080,384 B.
    "deepseek-v3": ModelSpec("deepseek-v3", 58, 256, 8, 7168, 2048, "swiglu", shared_experts=1),
}


def get_model(name: str) -> ModelSpec:
    """Look a preset up by name; the error lists the presets."""
    try:
        return PRESETS[name]
    except KeyError:
        raise KeyError(f"unknown model preset {name!r}; presets: {', '.join(PRESETS)}") from None
