"""What the engine must compute, without the engine: the layer-0 inputs, the gates, and the dense reference.

Each step's tokens start from a seeded random hidden state (``make_inputs``). Layer ``l`` of a step: the NON-MoE
stand-in ``x = rms_norm(h) @ Wn_l^T``, ``h = h + x``; then the MoE part ``h = h + sum_k gate_k * FFN_{e_k}(x)`` over
the token's top-k experts from the workload (no router: the routing is the trace's). Gates are ``workload.gates``
when the trace has them, else ``1 / top_k``. ``dense_reference`` computes this with every expert resident and no
plan: offloading must not change it.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from artifact.core.workload import Workload
from artifact.engine.kernels import RMS_EPS
from artifact.engine.weights import ExpertWeights, shape_difference
from artifact.models import ModelSpec


def make_inputs(num_tokens: int, d_model: int, seed: int = 0) -> torch.Tensor:
    """The hidden state of every token at layer 0 of its step: seeded ``N(0, 1)``, float32 on the CPU. ``[T, D]``"""
    gen = torch.Generator().manual_seed(seed + 104729)
    return torch.randn(num_tokens, d_model, generator=gen)


def token_gates(workload: Workload) -> np.ndarray:
    """Gate weight of each token's k-th expert at each layer: the trace's gates, else ``1 / top_k``. ``[T, L, K]``"""
    if workload.gates is not None:
        return workload.gates.astype(np.float32)
    return np.full(workload.experts.shape, 1.0 / workload.top_k, np.float32)


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
    diff = shape_difference(model, weights.model)
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
