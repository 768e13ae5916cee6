"""A real transformers MoE model offloaded and run with live strategies (artifact.offload), on the CPU.

Tiny random configs of every supported family (built from a config, nothing downloaded), float32:
- greedy generation gives the same tokens (and the same scores, to float drift) as the model with every expert
  resident, prefill waves included;
- the live run's plan is the plan of its recorded trace replayed through the planner: identical operations, so
  identical counts, and the plan-driven engine issues exactly those copies;
- the recorded trace is valid (schema 2, lookahead, phase);
- the live routing source answers as the trace source does, and refuses the future;
- bad input is refused before any weight moves; the CLI and the E10 quick run work end to end.
"""

from __future__ import annotations

import copy
from dataclasses import replace

import numpy as np
import pytest
import torch

from artifact.core.errors import FutureAccessError, Unrunnable
from artifact.core.metrics import count_metrics
from artifact.core.requests import build_requests
from artifact.engine import OffloadEngine
from artifact.engine.hf_models import TINY_CONFIGS, build_model
from artifact.engine.offload import OffloadedExperts, offload
from artifact.planner import plan as make_plan
from artifact.planner import strategies
from artifact.runtime.live import LiveRouting, live_refusal, replay_workload
from artifact.runtime.scheduler import TraceRouting
from artifact.runtime.simulator import simulate
from artifact.traces.trace import DECODE, PREFILL, load, save
from tests.helpers import TEST_HW, random_workload, replay_check, tiny_model

PLAN_FIELDS = ("load_gid", "load_slot", "load_gate", "load_wait", "load_before", "load_prefetch", "comp_ls",
               "comp_item", "comp_offsets", "use_gid", "use_slot", "use_load", "use_tokens", "use_hit",
               "resident_at_start")
LIVE = [n for n, s in strategies().items() if live_refusal(s) is None]
NOT_LIVE = [n for n, s in strategies().items() if live_refusal(s) is not None]


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny matmuls on a shared 2-core machine: one intra-op thread is faster and immune to contention."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _prompts(vocab: int, batch: int = 2, length: int = 12, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(2, vocab, (batch, length), generator=g)


def _generate(model, ids, new: int = 6):
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=new, min_new_tokens=new, do_sample=False, num_beams=1,
                             pad_token_id=0, attention_mask=torch.ones_like(ids), output_scores=True,
                             return_dict_in_generate=True)
    return out.sequences, torch.stack(out.scores, 1)


def _hw(spec):
    """The test profile, with FFN timings for the live model's name (so the simulator can time its plans)."""
    return replace(TEST_HW, ffn_tables={**TEST_HW.ffn_tables, spec.name: TEST_HW.ffn_tables["tiny"]})


def _offloaded(name: str, strategy: str, cache: int, **kw):
    model = build_model(name, seed=1)
    ref = copy.deepcopy(model)
    return ref, offload(model, strategy, cache, "cpu", TEST_HW, **kw)


def _assert_replays(report, hw) -> None:
    """Planning the recorded trace again gives the live plan, operation for operation."""
    w = replay_workload(report.trace, report.model)
    p = make_plan(w, report.strategy, report.extra["requested_cache"], report.protocol,
                  hardware=hw)
    for f in PLAN_FIELDS:
        assert np.array_equal(getattr(p, f), getattr(report.plan, f)), f"{report.strategy}: plan field {f}"
    assert count_metrics(p) == report.counts
    assert (p.steps, p.requests) == (report.plan.steps, report.plan.requests)
    replay_check(report.plan)


# --------------------------------------------------------------------------------------------------------------
# Every family: same tokens, same plan on replay, a valid trace
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(TINY_CONFIGS))
def test_every_family_generates_the_resident_tokens_and_replays(name, tmp_path):
    ref, model = _offloaded(name, "intelligent_dedup", 6)
    ids = _prompts(256)
    want, want_scores = _generate(ref, ids)
    got, got_scores = _generate(model, ids)
    assert torch.equal(got, want), f"{name}: offloaded tokens differ from the resident model's"
    torch.testing.assert_close(got_scores, want_scores, rtol=1e-4, atol=1e-4)

    session = model.expert_offload
    rep = session.last
    assert type(model.get_submodule(session.layers[0].site.block_path).experts) is not type(ref.get_submodule(
        session.layers[0].site.block_path).experts)
    encdec = bool(getattr(ref.config, "is_encoder_decoder", False))
    if not encdec:  # prefill needs more experts per layer than 6 slots: waves (several COMPUTEs in a layer-step)
        assert np.bincount(rep.plan.comp_ls).max() > 1
    # The executor issued exactly the plan's copies, COMPUTEs and uses.
    assert (rep.issued.copies, rep.issued.computes, rep.issued.uses) == (
        rep.plan.num_loads, rep.plan.num_computes, int(rep.plan.use_gid.shape[0]))
    assert rep.counts["loads"] > 0
    # The trace: valid on disk, one sequence per prompt, prefill then decode, lookahead from layer 1 on.
    path = save(rep.trace, tmp_path / "live.npz")
    tr = load(path)
    assert tr.num_sequences == ids.shape[0] and tr.layers == rep.model.moe_layers
    assert tr.phase_counts() == ({"prefill": 0, "decode": 12} if encdec else {"prefill": 24, "decode": 10})
    assert (tr.lookahead[:, 1:] >= 0).all() and (tr.lookahead[:, 0] == -1).all()
    assert rep.step_phase[0] == (DECODE if encdec else PREFILL)
    if encdec:
        assert rep.issued.encoder_copies > 0  # Switch's encoder experts were streamed through the staging slots
    # Replay: the same plan; the simulator times it; the plan-driven engine issues the same copies.
    hw = _hw(rep.model)
    _assert_replays(rep, TEST_HW)
    w = replay_workload(tr, rep.model)
    assert np.isfinite(simulate(rep.plan, w, hw).total_ms)
    eng = OffloadEngine(rep.model, rep.plan.cache_experts, device="cpu")
    _, tl = eng.run(rep.plan, w, repeats=1, warmup=0, timeline=False)
    assert tl.info["copies_issued"] == rep.plan.num_loads == rep.issued.copies
    assert tl.info["bytes_copied"] == rep.counts["bytes_h2d"]
    if name != "tiny-gpt-oss":  # gpt-oss's slab rows also carry its biases
        assert rep.issued.bytes_copied == rep.counts["bytes_h2d"]


@pytest.mark.parametrize("strategy", LIVE)
def test_every_live_strategy_runs_the_same_code_as_on_traces(strategy):
    ref, model = _offloaded("tiny-mixtral", strategy, 12)
    ids = _prompts(256, batch=2, length=5, seed=3)
    want, _ = _generate(ref, ids, 5)
    got, _ = _generate(model, ids, 5)
    assert torch.equal(got, want), strategy
    _assert_replays(model.expert_offload.last, TEST_HW)


@pytest.mark.parametrize("strategy", NOT_LIVE)
def test_strategies_that_need_the_future_are_refused_before_weights_move(strategy):
    model = build_model("tiny-olmoe")
    experts = model.model.layers[0].mlp.experts
    with pytest.raises(Unrunnable, match="cannot|bound|reads"):
        offload(model, strategy, 16, "cpu", TEST_HW)
    assert model.model.layers[0].mlp.experts is experts and not hasattr(model, "expert_offload")


@pytest.mark.parametrize("name", ["tiny-olmoe", "tiny-qwen3-moe"])
def test_grouped_ffn_path_on_the_cpu(name):
    """The grouped path (the one CUDA takes on sm90/sm100) runs on the CPU too: its one packed index upload (GEMM
    offsets, entries, token rows) gives the resident model's tokens with a cache small enough for misses and waves."""
    ref, model = _offloaded(name, "intelligent_dedup", 6, ffn="grouped")
    assert model.expert_offload.executor.ffn == "grouped"
    ids = _prompts(256)
    want, _ = _generate(ref, ids)
    got, _ = _generate(model, ids)
    assert torch.equal(got, want)
    assert model.expert_offload.last.counts["loads"] > 0


def test_per_item_protocol_replays_too():
    ref, model = _offloaded("tiny-olmoe", "on_demand", 8, protocol="per_item")
    ids = _prompts(256, batch=3, length=4, seed=5)
    want, _ = _generate(ref, ids, 4)
    got, _ = _generate(model, ids, 4)
    assert torch.equal(got, want)
    rep = model.expert_offload.last
    assert rep.plan.params["per_item_accounting"] and (rep.plan.comp_item >= 0).all()
    _assert_replays(rep, TEST_HW)


def test_reconfigure_and_every_expert_resident():
    ref, model = _offloaded("tiny-qwen3-moe", "on_demand", 4)
    ids = _prompts(256, batch=1, length=6, seed=7)
    want, _ = _generate(ref, ids, 4)
    session = model.expert_offload
    for strategy, cache in (("gpu_only", 1), ("lfru", 16), ("intelligent_dedup", 4)):
        session.configure(strategy, cache)
        got, _ = _generate(model, ids, 4)
        assert torch.equal(got, want), strategy
        rep = session.last
        if strategy == "gpu_only":
            assert rep.counts["loads"] == 0 and rep.cache_experts == rep.model.total_experts
        _assert_replays(rep, TEST_HW)
    assert [r.strategy for r in session.reports] == ["gpu_only", "lfru", "intelligent_dedup"]
    assert "decode" in session.last.line() and session.last.summary()["decode_tokens"] == 3


def test_switch_tokens_over_capacity_get_no_expert_output_as_in_the_model():
    """A plain forward over many decoder tokens, with a capacity of 2 tokens per expert: dropped tokens keep the
    residual only, in the encoder (streamed) and the decoder (planned; recorded with the router's choice)."""
    from transformers import AutoConfig

    from artifact.engine.hf_models import model_class

    mt, fields = TINY_CONFIGS["tiny-switch"]
    cfg = AutoConfig.for_model(mt, **{**fields, "expert_capacity": 2})
    torch.manual_seed(0)
    model = model_class(cfg).from_config(cfg).eval()
    ref = copy.deepcopy(model)
    model = offload(model, "on_demand", 4, "cpu", TEST_HW)
    ids, dec = _prompts(256, 1, 16, 1), _prompts(256, 1, 16, 2)
    with torch.no_grad():
        want = ref(input_ids=ids, decoder_input_ids=dec).logits
        got = model(input_ids=ids, decoder_input_ids=dec).logits
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    rep = model.expert_offload.finish_run()
    assert rep is not None and rep.trace.num_tokens == 16


# --------------------------------------------------------------------------------------------------------------
# Refusals, before any weight moves
# --------------------------------------------------------------------------------------------------------------


def test_bad_input_is_refused_before_any_weight_moves():
    from transformers import LlamaConfig, LlamaForCausalLM

    dense = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2)).eval()
    with pytest.raises(ValueError, match="not an MoE model"):
        offload(dense, "on_demand", 4, "cpu", TEST_HW)
    model = build_model("tiny-olmoe")
    experts = model.model.layers[0].mlp.experts
    with pytest.raises(Unrunnable, match="smaller than one token's top-4"):
        offload(model, "on_demand", 3, "cpu", TEST_HW)
    with pytest.raises(Unrunnable, match="exceeds the model's 128 routed experts"):
        offload(model, "on_demand", 129, "cpu", TEST_HW)
    with pytest.raises(KeyError, match="unknown strategy 'nope'"):
        offload(model, "nope", 8, "cpu", TEST_HW)
    with pytest.raises(Unrunnable, match="per-layer"):  # mixtral_offloading splits 8 slots over 4 layers: 2 < 4
        offload(model, "mixtral_offloading", 8, "cpu", TEST_HW)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="torch.cuda.is_available"):
            offload(model, "on_demand", 8, "cuda", TEST_HW)
    assert model.model.layers[0].mlp.experts is experts and not hasattr(model, "expert_offload")
    offload(model, "on_demand", 8, "cpu", TEST_HW)
    assert isinstance(model.model.layers[0].mlp.experts, OffloadedExperts)
    with pytest.raises(ValueError, match="already offloaded"):
        offload(model, "on_demand", 8, "cpu", TEST_HW)


# --------------------------------------------------------------------------------------------------------------
# The live routing source against the trace source
# --------------------------------------------------------------------------------------------------------------


def test_live_routing_answers_as_the_trace_source_and_refuses_the_future():
    m = tiny_model(layers=3, experts=8, top_k=2)
    w = random_workload(m, batch=3, n_seq=5, seed=2, steps=5)
    ref = TraceRouting(w, build_requests(w))
    live = LiveRouting(w.layers, m.experts, w.top_k)
    L = w.layers
    for s in range(w.steps):
        items, seqs = ref.step_meta(s)
        live.begin_step(items, seqs)
        sl = w.step(s)
        for layer in range(L):
            g = s * L + layer
            nxt = w.lookahead[sl, layer + 1] if layer + 1 < L else None
            live.set_layer(g, w.experts[sl, layer], nxt, w.gates[sl, layer])
            for per_item in (False, True):
                a, b = list(ref.groups(g, per_item)), list(live.groups(g, per_item))
                assert len(a) == len(b)
                for (ia, ga, ca), (ib, gb, cb) in zip(a, b):
                    assert ia == ib and np.array_equal(ga, gb) and np.array_equal(ca, cb)
            assert np.array_equal(ref.routing(g), live.routing(g)) and live.routing(g).dtype == ref.routing(g).dtype
            assert all(np.array_equal(x, y) for x, y in zip(ref.unique(g), live.unique(g)))
            if layer + 1 < L:
                assert np.array_equal(ref.lookahead(g + 1), live.lookahead(g + 1))
                with pytest.raises(FutureAccessError):
                    live.routing(g + 1)
            with pytest.raises(FutureAccessError):
                live.lookahead(g + 2)
        assert all(np.array_equal(x, y) for x, y in zip(ref.step_meta(s), live.step_meta(s)))
        with pytest.raises(FutureAccessError):
            live.step_routing(s)
    with pytest.raises(RuntimeError, match="expected"):
        live.set_layer(live.next_g + 1, w.experts[:1, 0], None)


# --------------------------------------------------------------------------------------------------------------
# The command line and E10's code path
# --------------------------------------------------------------------------------------------------------------


def test_generate_command(tmp_path, capsys):
    from artifact.cli import main

    out = tmp_path / "run.npz"
    assert main(["generate", "--model", "tiny-olmoe", "--prompt", "hello experts", "--strategy", "on_demand",
                 "--cache-experts", "16", "--device", "cpu", "--max-new-tokens", "5", "--ignore-eos",
                 "--record", str(out), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "on_demand, cache 16 experts: decode" in err and "GB moved" in err
    tr = load(out)
    assert tr.phase_counts() == {"prefill": len(b"hello experts"), "decode": 4}
    ids = tmp_path / "ids.txt"
    ids.write_text("1 2 3\n4, 5, 6\n")
    assert main(["generate", "--model", "tiny-switch", "--prompt-ids", str(ids), "--cache-experts", "2",
                 "--device", "cpu", "--max-new-tokens", "3", "--quiet"]) == 0
    for argv, msg in ((["--strategy", "belady"], "bound"), (["--strategy", "nope"], "unknown strategy"),
                      (["--cache-experts", "3"], "smaller than one token's top-4"),
                      (["--model", str(tmp_path)], "no config.json")):
        base = ["generate", "--model", "tiny-olmoe", "--prompt", "x", "--cache-experts", "8", "--device", "cpu",
                "--quiet"]
        assert main(base + argv) == 2, argv
        assert msg in capsys.readouterr().err, argv
    if not torch.cuda.is_available():
        assert main(["generate", "--model", "tiny-olmoe", "--prompt", "x", "--cache-experts", "8",
                     "--device", "cuda"]) == 2
        assert "torch.cuda.is_available() is False" in capsys.readouterr().err


def test_e10_quick_code_path(tmp_path):
    from artifact.experiments.e10 import quick_config, run_e10
    from artifact.report.e10 import e10_table, fig_e10, load_e10

    cfg = replace(quick_config(models=("tiny-olmoe",)), fractions=(0.1, 0.5), new_tokens=3)
    path = run_e10(tmp_path, cfg)
    d = load_e10(path)
    assert list(d["arm"]) == ["resident"] + ["offload"] * 5 + ["accelerate_device_map", "accelerate_cpu_offload"]
    off = d[d["arm"] == "offload"]
    assert (off["replay_counts_match"] == "true").all() and (off["tokens_match_resident"] == "true").all()
    assert off["sim_ms_per_token"].notna().all() and off["decode_tokens_per_s"].notna().all()
    assert (off["bytes_copied"] > 0).sum() == 4 and (d["note"].str.startswith("error") == False).all()  # noqa: E712
    # three passes (the offload arms' later ones alternately reversed), decode steps pooled, each pass's median kept;
    # the later passes generated the same tokens
    timed = d[d["arm"].isin(["resident", "offload"])]
    assert (timed["runs"] == 3).all() and (timed["decode_tokens"] == 3 * (cfg.new_tokens - 1)).all()
    assert timed["ms_per_token_runs"].map(lambda v: len(str(v).split(";")) == 3).all()
    assert not d["note"].fillna("").str.contains("differently|later pass").any()
    # warm-up until two runs in a row agree (at most 4), each run's median kept; the simulator fitted to the faster
    # gpu_only run, which the row names
    warm = timed["warmup_ms_per_token"].map(lambda v: [float(x) for x in str(v).split(";")])
    assert warm.map(lambda ms: 1 <= len(ms) <= 4 and min(ms) > 0).all()
    assert warm.map(lambda ms: len(ms) == 4 or abs(ms[-1] - ms[-2]) <= 0.05 * min(ms[-2:])).all()
    cal = off[off["strategy"] == "gpu_only"]["note"].iloc[0]
    assert cal.startswith("calibration point of the sim_* columns (fitted to its run ") and "of 3, the fastest" in cal
    mtime = path.stat().st_mtime_ns
    run_e10(tmp_path, cfg)  # resumed: every row is there, nothing runs again
    assert path.stat().st_mtime_ns == mtime
    t = e10_table(d)
    assert len(t.text) == len(d) and "tok/s" in t.markdown()
    host = t.text["host us per layer: sync, decision, issue"]
    offloaded = list(d["arm"] == "offload")
    assert (host[offloaded].str.count(",") == 2).all() and (host[[not o for o in offloaded]] == "n/a").all()
    plot = fig_e10(d, tmp_path / "fig")
    assert plot.png.is_file() and "decode" in plot.caption


# --------------------------------------------------------------------------------------------------------------
# GPU (skipped without CUDA): real streams, events, pinned slab, the grouped FFN path
# --------------------------------------------------------------------------------------------------------------

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("name", ["tiny-olmoe", "tiny-gpt-oss", "tiny-switch"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpu_offload(name, dtype):
    """Prefetches on the copy stream, waves, slot reuse across layers: a missing event would race here. float32:
    the resident model's tokens; bfloat16 (the kernels' accumulation order differs): the plan still replays."""
    model = build_model(name, seed=1, dtype=dtype, device="cuda")
    ref = copy.deepcopy(model)
    model = offload(model, "intelligent_dedup", 6, "cuda", TEST_HW)
    assert model.expert_offload.slab.pinned
    ids = _prompts(256).cuda()
    want, _ = _generate(ref, ids)
    got, _ = _generate(model, ids)
    if dtype == torch.float32:
        assert torch.equal(got, want), name
    rep = model.expert_offload.last
    assert rep.issued.copies == rep.plan.num_loads and rep.summary()["sync_us_per_layer"] > 0
    _assert_replays(rep, TEST_HW)


@pytest.mark.gpu
@gpu
def test_gpu_host_slab_registration_is_undone_and_a_refusal_leaves_no_error():
    """A slab collected without release() unregisters its range; a refused registration (the range is registered
    already) falls back to pinned memory and leaves no pending CUDA error for the next kernel to report."""
    import gc

    from artifact.engine.offload import HostSlab, _cuda_ok, clear_cuda_error

    rt = torch.cuda.cudart()
    slab = HostSlab(4, 1 << 20, torch.float32, pin=True)
    assert slab.registered and slab.pinned
    t = slab.tensor
    del slab
    gc.collect()
    assert not t.is_pinned()  # unregistered by the finaliser, while the memory is still alive here
    assert _cuda_ok(rt.cudaHostRegister(t.data_ptr(), t.numel() * t.element_size(), 0))
    assert not _cuda_ok(rt.cudaHostRegister(t.data_ptr(), t.numel() * t.element_size(), 0))  # already registered
    clear_cuda_error()
    torch.ones(8, device="cuda").add_(1)  # would raise the stale error had it not been cleared
    torch.cuda.synchronize()
    rt.cudaHostUnregister(t.data_ptr())


@pytest.mark.gpu
@gpu
def test_gpu_pinned_ring_never_overwrites_an_upload_still_queued():
    """The index uploads of live COMPUTEs reuse a small pinned ring: with the stream held back by a long kernel, every
    upload (across halves, wraps, and one too large for the ring) must still arrive as it was written."""
    from artifact.engine.live_executor import PinnedRing

    ring = PinnedRing(size=64)
    rng = np.random.default_rng(0)
    big = torch.randn(4096, 4096, device="cuda")
    sent, got = [], []
    for i in range(200):
        if i % 25 == 0:
            big = big @ big  # keeps the stream busy, so the copies queued behind it lag the host
            big /= big.norm()
        a = rng.integers(-1 << 30, 1 << 30, int(rng.choice([1, 3, 17, 31, 40]))).astype(np.int32)
        sent.append(a)
        got.append(ring.upload(a, torch.device("cuda")))
    torch.cuda.synchronize()
    for a, t in zip(sent, got):
        assert np.array_equal(t.cpu().numpy(), a)
