"""How much host time a live offloaded decode costs per strategy (a benchmark measures; nothing here asserts a time).

Live decode is host-bound at batch 1: at every MoE layer the host reads the expert ids (one device-to-host copy),
the strategy decides (``Scheduler.layer_step``) and the executor issues the copies and expert kernels. These cases
time exactly that path on a model where nothing else is expensive: a ``qwen3_moe`` with Qwen3-30B-A3B's routing
shape (48 MoE layers, 128 experts, top-8) and tiny dimensions (hidden 64, expert FFN 32; random weights, built from
a config, nothing downloaded), offloaded with 614 device slots (10% of the routed experts, as in E10).

Each case is one strategy that can run live (``gpu_only`` aside: it needs a slot for every expert); a round is one
``generate`` of ``NEW_TOKENS`` greedy tokens from a fixed ``PROMPT_TOKENS``-token prompt (one prefill step, then
decode steps), after one untimed warm-up round. The model is built, offloaded and run twice, once per module, and
switched between strategies with ``expert_offload.configure``.
``extra_info`` carries the run's counts and the medians per layer of the three host figures the run reports (D2H
sync, decision, issue, in us), so a slower decision shows beside the time. The CPU cases run wherever the suite runs
(``nox -s bench``); the same cases on CUDA (bf16, the grouped FFN path) skip without it.
"""

from __future__ import annotations

import time

import pytest
import torch

from artifact.planner import strategies
from artifact.runtime.live import live_refusal

pytest.importorskip("transformers", reason="the live cases build a transformers model (the 'record' extra)")

LAYERS, EXPERTS, TOP_K = 48, 128, 8
CACHE = 614  # 10% of the routed experts
PROMPT_TOKENS, NEW_TOKENS = 16, 8
ROUNDS = 3
LIVE = [n for n, s in strategies().items() if live_refusal(s) is None and n != "gpu_only"]


def _model(device: str):
    from transformers import AutoConfig, AutoModelForCausalLM

    from artifact.engine.hf_models import TINY_CONFIGS
    from artifact.engine.offload import offload

    _, common = TINY_CONFIGS["tiny-qwen3-moe"]
    cfg = AutoConfig.for_model("qwen3_moe", **{**common, "num_hidden_layers": LAYERS, "num_experts": EXPERTS,
                                               "num_experts_per_tok": TOP_K, "moe_intermediate_size": 32,
                                               "intermediate_size": 64})
    torch.manual_seed(0)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = AutoModelForCausalLM.from_config(cfg).to(dtype).eval()
    model = offload(model, LIVE[0], CACHE, device=device)
    ids = torch.randint(2, cfg.vocab_size, (1, PROMPT_TOKENS), generator=torch.Generator().manual_seed(1)).to(device)
    for _ in range(2):  # the process's first runs (allocators, kernel handles) before any case: no first-case penalty
        _generate(model, ids)
    return model, ids


@pytest.fixture(scope="module")
def live_cpu():
    return _model("cpu")


@pytest.fixture(scope="module")
def live_cuda():
    return _model("cuda")


def _generate(model, ids) -> None:
    with torch.no_grad():
        model.generate(ids, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False, num_beams=1,
                       pad_token_id=0, attention_mask=torch.ones_like(ids))


def _bench_live(benchmark, record_counts, built, strategy: str) -> None:
    model, ids = built
    session = model.expert_offload
    session.configure(strategy, CACHE)
    _generate(model, ids)  # warm-up (and the slots' first fill)
    benchmark.pedantic(_generate, args=(model, ids), rounds=ROUNDS, iterations=1)
    rep = session.last
    s = rep.summary()
    record_counts(benchmark, rep.plan, **{k: s.get(k) for k in ("sync_us_per_layer", "plan_us_per_layer",
                                                                   "issue_us_per_layer", "decode_tokens_per_s")})


@pytest.mark.parametrize("strategy", LIVE)
def test_live_decode_cpu(benchmark, record_counts, live_cpu, strategy):
    benchmark.group = (f"live decode (CPU), qwen3_moe {LAYERS}x{EXPERTS} top-{TOP_K} tiny dims, C={CACHE}, "
                       f"{PROMPT_TOKENS}+{NEW_TOKENS} tokens")
    _bench_live(benchmark, record_counts, live_cpu, strategy)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="GPU live cases need CUDA")
@pytest.mark.parametrize("strategy", LIVE)
def test_live_decode_gpu(benchmark, record_counts, live_cuda, strategy):
    benchmark.group = (f"live decode (GPU), qwen3_moe {LAYERS}x{EXPERTS} top-{TOP_K} tiny dims, C={CACHE}, "
                       f"{PROMPT_TOKENS}+{NEW_TOKENS} tokens")
    benchmark._timer = time.perf_counter  # the device's time is not this process's CPU time (as the engine's cases)
    _bench_live(benchmark, record_counts, live_cuda, strategy)
