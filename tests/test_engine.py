"""The offloading engine: offloading never changes the math (engine = dense reference), the check can fail, the
host issue order of plan.py, what the engine counts it did, weight files, calibration and the GPU-check harness.

Plans come from the one scheduler (``artifact.planner.plan``) on the tests' hardware profile.

Tolerance: float32 on the CPU, max |out - ref| / max |ref| <= 1e-5. Engine and reference do the same float32 ops in
a different order (expert contributions summed in slot order vs expert order, matmuls over different row subsets),
which drifts by ~3e-7 here; a wrong expert, a missed token or a stale slot moves the output by O(1) (the broken-plan
test shows > 1e-2), so 1e-5 sits far from both.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from artifact.core.metrics import run_metrics
from artifact.core.plan import PlanBuilder, check_plan
from artifact.engine import ExpertWeights, OffloadEngine, PlanError, dense_reference, max_rel_error
from artifact.experiments.gpu_checks import lockstep_workload, next_layer_plan
from artifact.models import ModelSpec
from artifact.planner import plan as make_plan
from artifact.traces.trace import Trace, make_meta
from artifact.traces.workload import decode_workload
from tests.helpers import DATA, TEST_HW

TEST_HW_PATH = DATA / "h200-test.json"

TOL = 1e-5
CUDA = torch.cuda.is_available()
gpu = pytest.mark.skipif(not CUDA, reason="needs CUDA")


def tiny(activation: str = "swiglu", top_k: int = 2, layers: int = 3, experts: int = 8) -> ModelSpec:
    return ModelSpec("tiny", moe_layers=layers, experts=experts, top_k=top_k, d_model=32, d_ff=64,
                     activation=activation, dtype="float32")


def hand_workload(model: ModelSpec, batch: int, lengths=(5, 3, 6, 4), seed: int = 0, gates: bool = True):
    """A hand-made trace (numpy) decoded with continuous batching: sequences of different lengths, so late steps
    have fewer tokens than the batch."""
    rng = np.random.default_rng(seed)
    T = int(sum(lengths))
    L, E, K = model.moe_layers, model.experts, model.top_k
    ex = np.stack([np.stack([rng.choice(E, K, replace=False) for _ in range(L)]) for _ in range(T)]).astype(np.int16)
    g = (rng.random((T, L, K)) + 0.2).astype(np.float16) if gates else None
    off = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    tr = Trace(ex, off, make_meta(model.name, E, "test"), gates=g).validate()
    return decode_workload(tr, batch, model=model)


def planned(wl, strategy: str, cache_experts: int, protocol: str = "batched"):
    return make_plan(wl, strategy, cache_experts, protocol, 0, TEST_HW)


def on_demand(wl, cache_experts: int, protocol: str = "batched"):
    return planned(wl, "on_demand", cache_experts, protocol)


def gpu_only(wl, protocol: str = "batched"):
    return planned(wl, "gpu_only", wl.layers * wl.model.experts, protocol)


_WEIGHTS: dict = {}


def weights(model: ModelSpec, dtype="float32") -> ExpertWeights:
    key = (model, dtype)
    if key not in _WEIGHTS:
        _WEIGHTS[key] = ExpertWeights.random(model, dtype, seed=3, init_device="cpu")
    return _WEIGHTS[key]


def run(model, wl, plan, ffn="loop", device="cpu", dtype="float32", **kw):
    w = weights(model, dtype)
    eng = OffloadEngine(model, plan.cache_experts, weights=w, device=device, ffn=ffn)
    out, tl = eng.run(plan, wl, **kw)
    ref = dense_reference(model, w, wl, steps=plan.steps)
    return out, ref, tl


# ---------------------------------------------------------------------------------------------------------------
# Offloading never changes the math
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("activation,top_k", [("relu", 1), ("swiglu", 2)])
@pytest.mark.parametrize("ffn", ["loop", "grouped"])
@pytest.mark.parametrize("protocol", ["batched", "per_item"])
def test_lru_plan_matches_dense_reference(activation, top_k, ffn, protocol):
    m = tiny(activation, top_k)
    wl = hand_workload(m, batch=3)
    plan = on_demand(wl, max(top_k, 3), protocol)  # small cache: slots reused a lot
    assert plan.num_loads > plan.cache_experts  # slot reuse happened
    if protocol == "per_item":
        assert (plan.comp_item >= 0).all()
    out, ref, tl = run(m, wl, plan, ffn)
    assert out.shape == (int(wl.step_offsets[plan.steps]), m.d_model)
    assert max_rel_error(out, ref) <= TOL
    assert tl.info["copies_issued"] == plan.num_loads
    assert tl.info["bytes_copied"] == plan.num_loads * m.expert_bytes  # float32 model: expert_bytes is the fp32 size


@pytest.mark.parametrize("activation,top_k", [("relu", 1), ("swiglu", 2)])
def test_gpu_only_resident_at_start(activation, top_k):
    m = tiny(activation, top_k)
    wl = hand_workload(m, batch=4)
    plan = gpu_only(wl)
    assert plan.num_loads == 0 and plan.resident_at_start.shape[0] == m.total_experts
    out, ref, tl = run(m, wl, plan, "grouped")
    assert max_rel_error(out, ref) <= TOL
    assert tl.info["copy_busy_ms"] == 0.0


def test_gpu_only_per_item():
    m = tiny("relu", 1)
    wl = hand_workload(m, batch=3)
    out, ref, _ = run(m, wl, gpu_only(wl, "per_item"))
    assert max_rel_error(out, ref) <= TOL


@pytest.mark.parametrize("ffn", ["loop", "grouped"])
def test_prefetch_plan_matches_reference_and_issue_order(ffn):
    """Prefetches decided at g are issued before NON-MoE(g + 1); demand loads after their own NON-MoE."""
    m = tiny("swiglu", 2)
    wl = hand_workload(m, batch=2)
    plan = next_layer_plan(wl, TEST_HW)
    out, ref, tl = run(m, wl, plan, ffn)
    assert max_rel_error(out, ref) <= TOL
    pf = np.nonzero(plan.load_prefetch)[0]
    assert pf.size
    assert (tl.load_start[pf] < tl.nonmoe_start[plan.load_gate[pf] + 1]).all()
    assert (tl.load_start[pf] > tl.nonmoe_end[plan.load_gate[pf]]).all()
    demand = np.nonzero(~plan.load_prefetch)[0]
    assert (tl.load_start[demand] > tl.nonmoe_end[plan.load_gate[demand]]).all()


def test_no_gates_in_trace_uses_one_over_k():
    m = tiny("swiglu", 2)
    wl = hand_workload(m, batch=2, gates=False)
    out, ref, _ = run(m, wl, on_demand(wl, 4))
    assert max_rel_error(out, ref) <= TOL


def test_plan_prefix_of_workload():
    """A plan over the first steps only: outputs cover exactly those steps' tokens."""
    m = tiny("relu", 1)
    wl = hand_workload(m, batch=2)
    short = wl.head(3)
    plan = on_demand(short, 3)
    out, ref, _ = run(m, wl, plan)
    assert out.shape[0] == int(wl.step_offsets[3])
    assert max_rel_error(out, ref) <= TOL


def test_bfloat16_close_to_float32_reference():
    m = tiny("swiglu", 2)
    wl = hand_workload(m, batch=2)
    plan = on_demand(wl, 4)
    w = weights(m, "bfloat16")
    eng = OffloadEngine(m, plan.cache_experts, weights=w, device="cpu")
    out, tl = eng.run(plan, wl)
    assert tl.info["bytes_per_expert"] == m.expert_params * 2  # bf16: half the float32 bytes
    err = max_rel_error(out, dense_reference(m, w, wl))
    assert 0 < err <= 5e-2


# ---------------------------------------------------------------------------------------------------------------
# The check can fail
# ---------------------------------------------------------------------------------------------------------------


def _two_token_case():
    """One layer, one slot; step 0 needs expert 0, step 1 needs expert 1."""
    m = tiny("relu", 1, layers=1, experts=4)
    tr = Trace(np.array([[[0]], [[1]]], np.int16), np.array([0, 2], np.int64), make_meta("tiny", 4, "test"))
    wl = decode_workload(tr, 1, model=m)
    return m, wl


def _one_slot_plan(m, wl, broken: str):
    pb = PlanBuilder()
    a = pb.load(0, 0, 0, -1, False)  # expert 0 -> slot 0, gated on NON-MoE of layer-step 0
    if broken == "order":
        pb.load(1, 0, 0, -1, False)  # expert 1 overwrites slot 0 BEFORE the compute that reads expert 0
        c0 = pb.compute(0, -1, [0], [0], [a], [1], [False])
        b = 1
    else:
        c0 = pb.compute(0, -1, [0], [0], [a], [1], [False])
        wait = -1 if broken == "wait" else c0  # "wait": issued in order but forgets to wait for c0 (a GPU race)
        b = pb.load(1, 0, 1, wait, False)
    pb.compute(1, -1, [1], [0], [b], [1], [False])
    return pb.build(model=m, strategy=f"hand_{broken}", protocol="batched", cache_experts=1, batch=1, steps=2,
                    layers=1, requests=2)


def test_broken_dependency_is_detected():
    m, wl = _two_token_case()
    good = _one_slot_plan(m, wl, "none")
    out, ref, _ = run(m, wl, good)
    assert max_rel_error(out, ref) <= TOL

    bad = _one_slot_plan(m, wl, "order")
    with pytest.raises(PlanError, match="overwrite before use"):
        check_plan(bad)
    # Executed anyway: COMPUTE 0 reads expert 1's weights from slot 0, and the output check catches it.
    out, ref, _ = run(m, wl, bad, check=False)
    assert max_rel_error(out, ref) > 1e-2


def test_missing_slot_wait_is_a_plan_error():
    """On the synchronous CPU a LOAD that forgets to wait for the slot's last reader computes the right numbers; on
    a GPU it races. Only the static check can catch it here."""
    m, wl = _two_token_case()
    bad = _one_slot_plan(m, wl, "wait")
    with pytest.raises(PlanError, match="race"):
        check_plan(bad)
    out, ref, _ = run(m, wl, bad, check=False)
    assert max_rel_error(out, ref) <= TOL


def test_plan_workload_mismatch_errors():
    m = tiny("relu", 1)
    wl = hand_workload(m, batch=2)
    plan = on_demand(wl, 3)
    w = weights(m)
    eng = OffloadEngine(m, 3, weights=w, device="cpu")
    wrong_tokens = dataclasses.replace(plan, use_tokens=plan.use_tokens + 1)
    with pytest.raises(PlanError, match="tokens in the workload"):
        eng.run(wrong_tokens, wl)
    wrong_gid = dataclasses.replace(plan, use_gid=plan.use_gid.copy())
    wrong_gid.use_gid[0] = (wrong_gid.use_gid[0] + 1) % m.experts
    with pytest.raises(PlanError):
        eng.run(wrong_gid, wl)
    small = OffloadEngine(m, 2, weights=w, device="cpu")
    with pytest.raises(PlanError, match="needs 3 slots"):
        small.run(plan, wl)
    # A token whose expert no COMPUTE covers (drop the last compute's uses entirely).
    M = plan.num_computes
    dropped = dataclasses.replace(plan, comp_ls=plan.comp_ls[:M - 1], comp_item=plan.comp_item[:M - 1],
                                  comp_offsets=plan.comp_offsets[:M],
                                  use_gid=plan.use_gid[:plan.comp_offsets[M - 1]],
                                  use_slot=plan.use_slot[:plan.comp_offsets[M - 1]],
                                  use_load=plan.use_load[:plan.comp_offsets[M - 1]],
                                  use_tokens=plan.use_tokens[:plan.comp_offsets[M - 1]],
                                  use_hit=plan.use_hit[:plan.comp_offsets[M - 1]],
                                  load_before=np.minimum(plan.load_before, M - 1))
    with pytest.raises(PlanError, match="computed 0 times"):
        eng.run(dropped, wl)


# ---------------------------------------------------------------------------------------------------------------
# Timeline and measurement fields
# ---------------------------------------------------------------------------------------------------------------


def test_timeline_and_info():
    m = tiny("swiglu", 2)
    wl = hand_workload(m, batch=3)
    plan = on_demand(wl, 4)
    out, ref, tl = run(m, wl, plan, repeats=3, warmup=1)
    N, M, G = plan.num_loads, plan.num_computes, plan.layer_steps
    assert tl.executor == "engine"
    assert tl.load_start.shape == (N,) and tl.comp_end.shape == (M,) and tl.nonmoe_end.shape == (G,)
    assert (tl.load_end >= tl.load_start).all() and (tl.comp_end >= tl.comp_start).all()
    assert tl.load_start.min() >= 0
    # CPU: ops run when issued, so the plan.py issue order shows in the timestamps.
    comp_of = plan.load_before
    before = comp_of < M
    assert (tl.load_end[before] <= tl.comp_start[comp_of[before]]).all()
    info = tl.info
    for key in ("wall_ms", "repeats", "peak_device_bytes", "copy_busy_ms", "compute_busy_ms", "stall_ms",
                "bytes_per_expert", "issue_ms", "wall_ms_repeats", "step_ms"):
        assert key in info
    assert info["repeats"] == 3 and len(info["wall_ms_repeats"]) == 3
    assert info["bytes_per_expert"] == m.expert_params * 4
    assert len(info["step_ms"]) == plan.steps
    assert info["copy_busy_ms"] == pytest.approx(tl.copy_busy_ms)
    lean_out, lean = OffloadEngine(m, 4, weights=weights(m), device="cpu").run(plan, wl, timeline=False)
    assert torch.equal(lean_out, out)
    assert lean.info["wall_ms"] > 0 and np.isnan(lean.comp_start).all()


def test_lean_run_has_no_nan_figures():
    """A lean run measures no per-operation times: what it did not measure is None, never NaN, so its metrics row
    is strict JSON and its total is the wall time."""
    m = tiny("swiglu", 2)
    wl = hand_workload(m, batch=3)
    plan = on_demand(wl, 4)
    _, lean = OffloadEngine(m, 4, weights=weights(m), device="cpu").run(plan, wl, repeats=2, timeline=False)
    assert not lean.measured
    assert lean.total_ms is None and lean.copy_busy_ms is None and lean.compute_busy_ms is None
    for key in ("copy_busy_ms", "compute_busy_ms", "stall_ms"):
        assert lean.info[key] is None, key
    floats = [v for v in lean.info.values() if isinstance(v, float)]
    floats += [v for v in lean.info["wall_ms_repeats"]]
    assert all(np.isfinite(floats))
    row = run_metrics(plan, lean, wl.num_tokens)
    json.dumps(row, allow_nan=False)
    assert row["total_ms"] == lean.info["wall_ms"] and row["tokens_per_s"] > 0
    assert row["copy_busy_ms"] is None and row["stall_ms"] is None


# ---------------------------------------------------------------------------------------------------------------
# Weight files
# ---------------------------------------------------------------------------------------------------------------


def test_safetensors_round_trip_and_errors(tmp_path):
    from safetensors.torch import save_file

    m = tiny("swiglu", 2, layers=2, experts=4)
    w = ExpertWeights.random(m, "float32", seed=1, init_device="cpu")
    path = w.save_safetensors(tmp_path / "w.safetensors")
    back = ExpertWeights.from_safetensors(path, m)
    assert torch.equal(back.host, w.host) and torch.equal(back.nonmoe, w.nonmoe)
    wl = hand_workload(m, batch=2)
    plan = on_demand(wl, 3)
    out, _ = OffloadEngine(m, 3, weights=back, device="cpu").run(plan, wl)
    assert max_rel_error(out, dense_reference(m, w, wl)) <= TOL

    tensors = {f"layers.{l}.experts.{e}.{n}": t.clone() for l in range(2) for e in range(4)
               for n, t in w.matrices(l * 4 + e).items()}
    bad = dict(tensors)
    del bad["layers.1.experts.3.down"]
    save_file(bad, str(tmp_path / "missing.safetensors"))
    with pytest.raises(ValueError, match=r"missing\.safetensors: tensor 'layers\.1\.experts\.3\.down' is missing"):
        ExpertWeights.from_safetensors(tmp_path / "missing.safetensors", m)
    bad = dict(tensors)
    bad["layers.0.experts.2.up"] = torch.zeros(32, 64)
    save_file(bad, str(tmp_path / "shape.safetensors"))
    with pytest.raises(ValueError, match=r"'layers\.0\.experts\.2\.up' has shape \[32, 64\], expected \[64, 32\]"):
        ExpertWeights.from_safetensors(tmp_path / "shape.safetensors", m)
    # Without nonmoe tensors the stand-in's weights are seeded random.
    save_file(tensors, str(tmp_path / "experts_only.safetensors"))
    only = ExpertWeights.from_safetensors(tmp_path / "experts_only.safetensors", m, seed=1)
    assert torch.equal(only.host, w.host) and torch.equal(only.nonmoe, w.nonmoe)


def test_host_slab_is_one_allocation():
    m = tiny("relu", 1)
    w = weights(m)
    assert w.host.shape == (m.total_experts, m.expert_params)
    assert w.host.untyped_storage().nbytes() == m.total_experts * m.expert_bytes
    assert w.expert(5).data_ptr() == w.host.data_ptr() + 5 * m.expert_bytes


# ---------------------------------------------------------------------------------------------------------------
# Every registered strategy through the engine
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["batched", "per_item"])
def test_every_strategy_through_engine(protocol):
    """Every plannable strategy runs on the engine with the dense reference's outputs, and what the engine did
    (copies, bytes, COMPUTEs and uses, counted by its issue loop from the tensors it copied) is what the plan asks
    for and what the simulator timed."""
    from artifact.core.errors import Unrunnable
    from artifact.planner import strategies
    from artifact.runtime.simulator import simulate
    from tests.helpers import random_workload

    m = ModelSpec("tiny", 3, 8, 2, 32, 64, "swiglu", "float32")
    wl = random_workload(m, batch=3, n_seq=5, seed=11, steps=6)  # carries a lookahead for the predictor arms
    w = weights(m)
    ref = dense_reference(m, w, wl)
    cache = 6  # >= layers * top_k, which mixtral_offloading's per-layer slots need
    plans: dict = {}
    for name in strategies():
        try:
            plan = make_plan(wl, name, cache, protocol, hardware=TEST_HW, belady=plans.get("belady"))
        except Unrunnable:
            assert name == "oracle" and protocol == "per_item"
            continue
        plans[name] = plan
        eng = OffloadEngine(m, plan.cache_experts, weights=w, device="cpu")
        out, tl = eng.run(plan, wl, warmup=0)
        assert max_rel_error(out, ref[:out.shape[0]]) <= TOL, name
        did = tl.info
        sim = simulate(plan, wl, TEST_HW)
        on_sim = run_metrics(plan, sim, wl.num_tokens)
        # Copies and bytes moved: against the plan's LOADs, the simulator's timed LOADs and its bytes_h2d (the
        # model's expert size, not the engine's tensors).
        assert did["copies_issued"] == plan.num_loads == sim.load_start.shape[0] == on_sim["loads"], name
        assert did["bytes_copied"] == plan.num_loads * w.bytes_per_expert == on_sim["bytes_h2d"], name
        # COMPUTEs and the experts they ran.
        assert did["computes_issued"] == plan.num_computes == sim.comp_start.shape[0], name
        assert did["uses_issued"] == int((plan.use_tokens > 0).sum()), name
        assert run_metrics(plan, tl, wl.num_tokens)["executor"] == "engine" and on_sim["executor"] == "simulator"


# ---------------------------------------------------------------------------------------------------------------
# Calibration and GPU-check harness (CPU, quick)
# ---------------------------------------------------------------------------------------------------------------


def test_calibrate_cpu_quick_round_trip(tmp_path, one_thread):
    from artifact.measure.calibrate import calibrate
    from artifact.runtime.hardware import load_profile

    m = tiny("swiglu", 2)
    out = tmp_path / "cpu.json"
    prof = calibrate(device="cpu", quick=True, models=["switch-base-128", m], out=str(out))
    assert prof.name == "cpu"
    assert set(prof.ffn_tables) == {"switch-base-128", "tiny"}
    # Per-size figures only: a least-squares fit over three noisy CPU memcpy timings may even slope down.
    assert all(ms > 0 for _, ms in prof.copy_table) and all(v > 0 for v in prof.extra["copy_gbps"].values())
    assert all(ms > 0 for _, ms in prof.nonmoe_table)
    for key in ("device_name", "driver", "torch", "cuda", "date", "copy_gbps", "ffn_group_tables"):
        assert key in prof.extra
    back = load_profile(str(out))
    assert back.to_json() == json.loads(json.dumps(prof.to_json()))
    assert float(back.ffn_ms("tiny", 8)) > 0


@pytest.fixture
def one_thread():
    """Calibration on the CPU with one intra-op thread: on a busy 2-core machine two OpenMP threads spin."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_copy_line_is_exact_and_order_free():
    from artifact.runtime.hardware import copy_line

    table = [(1_000_000, 0.025), (4_000_000, 0.085), (16_000_000, 0.325), (64_000_000, 1.285)]  # 5 us + n / 50 GB/s
    lat, slope = copy_line(table)
    assert lat == pytest.approx(0.005, abs=1e-15) and slope == pytest.approx(2e-8, rel=1e-15)
    assert copy_line(table[::-1]) == (lat, slope)  # exactly rounded sums: no order effect
    noisy = [(n, ms * (1 + 0.01 * (-1) ** i)) for i, (n, ms) in enumerate(table)]
    s_np, i_np = np.polyfit([n for n, _ in noisy], [ms for _, ms in noisy], 1)
    got = copy_line(noisy)
    assert got[1] == pytest.approx(s_np, rel=1e-9) and got[0] == pytest.approx(max(i_np, 0.0), rel=1e-9)
    with pytest.raises(ValueError, match="two sizes"):
        copy_line([(5, 1.0), (5, 2.0)])


def test_calibrate_twice_fits_alike_and_records_spread(one_thread):
    """Two quick CPU calibrations: the fitted figures are the same function of the measured tables (exact, so a
    profile read back fits the same), both carry the spread of every figure family, and the comparison holds every
    fitted figure of one against the other's."""
    from artifact.measure.compare import compare_profiles, report
    from artifact.runtime.hardware import HardwareProfile, copy_line

    m = tiny("swiglu", 2)
    a, b = (calibrate_cpu(m) for _ in range(2))
    for p in (a, b):
        assert p._copy_fit == copy_line(p.copy_table) == HardwareProfile.from_json(p.to_json())._copy_fit
        spread = p.extra["copy_spread"]
        assert set(spread) == {str(n) for n, _ in p.copy_table}
        for sp in spread.values():
            assert {"n", "median", "iqr_rel", "ci95_rel", "rounds", "copies_per_burst", "converged"} <= set(sp)
            assert sp["n"] == sp["rounds"] >= 3
        grid = p.compute_tables["tiny"]
        cs = p.extra["compute_spread"]["tiny"]
        assert np.asarray(cs["iqr_rel"]).shape == np.asarray(grid["ms"]).shape
        assert {"iqr_rel_median", "iqr_rel_max", "retimed", "repeats"} <= set(cs)
        assert p.extra["host_issue_mode"] == "eager" and set(p.extra["host_issue_us_by_mode"]) == {"eager"}
        fit = p.extra["host_issue_fit"]
        assert {"iqr_rel_median", "iqr_rel_max", "ci95_rel_max", "repeats"} <= set(fit["spread"])
        assert all(r["iqr_rel"] is not None for r in fit["runs"])
    diffs = compare_profiles(a, b)
    fitted = {d.figure for d in diffs if d.fitted}
    assert {"bandwidth (GB/s)", "latency (ms)"} <= fitted
    assert {f"{n} B (ms)" for n, _ in a.copy_table} <= fitted
    assert {f"eager {k}" for k in a.host_issue_us} <= fitted
    assert "dependency (us)" in fitted and a.dependency_us == 0.0  # no second stream on the CPU
    _, ok = report(compare_profiles(a, a), 0.0)
    assert ok and all(d.rel == 0.0 for d in compare_profiles(a, a))


def calibrate_cpu(model):
    from artifact.measure.calibrate import calibrate

    return calibrate(device="cpu", quick=True, models=[model])


def test_gpu_checks_quick_cpu(tmp_path):
    from artifact.experiments.gpu_checks import main

    assert main(["--out", str(tmp_path), "--quick", "--device", "cpu", "--hardware", str(TEST_HW_PATH)]) == 0
    res = json.loads((tmp_path / "gpu_checks.json").read_text())
    checks = res["checks"]
    assert set(checks) == {"copy_efficiency", "host_overhead", "overlap", "peer_accelerate", "correctness"}
    assert not any("error" in c for c in checks.values())
    assert all(r["met"] for r in checks["correctness"]["rows"])  # the math holds even where timing means nothing
    assert checks["host_overhead"]["rows"] and checks["overlap"]["rows"]


def test_lockstep_workload_shape():
    m = tiny("relu", 1)
    wl = lockstep_workload(m, batch=4, steps=3)
    assert wl.steps == 3 and wl.num_tokens == 12 and (wl.tokens_per_step == 4).all()
    ex = wl.experts.astype(int)
    assert ex.min() >= 0 and ex.max() < m.experts


# ---------------------------------------------------------------------------------------------------------------
# GPU (skipped without CUDA)
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("protocol", ["batched", "per_item"])
def test_gpu_float32_matches_reference(protocol):
    """Real streams and events: a missing dependency would race here, not on the CPU."""
    m = tiny("swiglu", 2, layers=4, experts=16)
    wl = lockstep_workload(m, batch=8, steps=6, seed=2)
    w = ExpertWeights.random(m, "float32", seed=4)
    ref = dense_reference(m, w, wl)
    for plan in (on_demand(wl, 4, protocol), next_layer_plan(wl, TEST_HW), gpu_only(wl)):
        eng = OffloadEngine(m, plan.cache_experts, weights=w, device="cuda")
        for timeline in (True, False):
            out, tl = eng.run(plan, wl, repeats=2, warmup=1, timeline=timeline)
            assert max_rel_error(out, ref) <= 1e-4, (plan.strategy, timeline)
        assert tl.info["peak_device_bytes"] > 0


@pytest.mark.gpu
@gpu
def test_gpu_bfloat16_paths_match_reference():
    m = ModelSpec("tiny-gpu", 3, 16, 2, 256, 512, "swiglu", "bfloat16")
    wl = lockstep_workload(m, batch=16, steps=4, seed=3)
    w = ExpertWeights.random(m, "bfloat16", seed=5)
    ref = dense_reference(m, w, wl)
    plan = on_demand(wl, 8)
    paths = ["loop"] + (["grouped"] if torch.cuda.get_device_capability()[0] in (9, 10) else [])
    for ffn in paths:
        out, tl = OffloadEngine(m, 8, weights=w, device="cuda", ffn=ffn).run(plan, wl, repeats=2)
        assert max_rel_error(out, ref) <= 5e-2, ffn
        assert tl.info["ffn_path"] == ffn


@pytest.mark.gpu
@gpu
def test_gpu_calibrate_quick():
    from artifact.measure.calibrate import calibrate

    prof = calibrate(device="cuda", quick=True, models=["switch-base-128"])
    assert prof.copy_bandwidth_gbps > 1 and prof.extra["device_name"]
    dep = prof.extra["dependency"]
    assert 0.0 <= prof.dependency_us < 100.0 and set(dep["per_pair_ms"]) == {"loads", "computes", "chain"}
    assert dep["per_pair_ms"]["chain"] >= max(dep["per_pair_ms"]["loads"], dep["per_pair_ms"]["computes"])
