"""The parts of E10 (:mod:`artifact.experiments.e10`) that build, time, hand to accelerate and simulate one model:
random weights drawn on the device, forward passes timed with the device synchronised, generation bounded in time,
and the simulator's profile for a live model (measured copy table and COMPUTE grid, NON-MoE fitted to the
``gpu_only`` run)."""

from __future__ import annotations

import gc
import hashlib
import json
import statistics
import time
from dataclasses import replace

import numpy as np
import torch

from artifact.core.metrics import count_metrics


def build(config, dtype: torch.dtype, device: torch.device, seed: int) -> torch.nn.Module:
    """Random weights drawn where the model will run (a 30B model initialises on an H200 in seconds)."""
    from artifact.engine.hf_models import model_class

    torch.manual_seed(seed)
    if device.type == "cuda":
        torch.cuda.manual_seed_all(seed)
    with torch.device(device):
        model = model_class(config).from_config(config, dtype=dtype)
    if next(model.parameters()).device.type != device.type:  # a transformers version that ignored the context
        model.to(device)
    return model.eval()


def free(*objs) -> None:
    del objs
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StepTimer:
    """Wall ms and tokens of every forward pass of ``model`` (device synchronised at both ends)."""

    def __init__(self, model: torch.nn.Module, device: torch.device) -> None:
        self.device = device
        self.ms: list[float] = []
        self.tokens: list[int] = []
        self._t0 = None
        self._h = [model.register_forward_pre_hook(self._pre, with_kwargs=True),
                   model.register_forward_hook(self._post, with_kwargs=True)]

    def _pre(self, module, args, kwargs):
        t = kwargs.get("input_ids")
        if t is None and args and isinstance(args[0], torch.Tensor):
            t = args[0]
        self.tokens.append(int(t.numel()) if isinstance(t, torch.Tensor) else 0)
        _sync(self.device)
        self._t0 = time.perf_counter()

    def _post(self, module, args, kwargs, output):
        _sync(self.device)
        self.ms.append((time.perf_counter() - self._t0) * 1e3)

    def close(self) -> None:
        for h in self._h:
            h.remove()


def _stopping(budget_s: float):
    from transformers import StoppingCriteria, StoppingCriteriaList

    class TimeBudget(StoppingCriteria):
        def __init__(self) -> None:
            self.t0 = time.perf_counter()

        def __call__(self, input_ids, scores, **kwargs):
            done = time.perf_counter() - self.t0 > budget_s
            return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)

    return StoppingCriteriaList([TimeBudget()])


def generate(model, ids: torch.Tensor, new_tokens: int, budget_s: float) -> torch.Tensor:
    kw = {"max_new_tokens": new_tokens, "min_new_tokens": new_tokens, "do_sample": False, "num_beams": 1,
          "attention_mask": torch.ones_like(ids), "pad_token_id": 0, "stopping_criteria": _stopping(budget_s)}
    with torch.no_grad():
        return model.generate(ids, **kw)


def decode_median(step_ms: list) -> float | None:
    """The median decode step (ms) of one run: every forward pass after the first (prefill); None without one."""
    return float(statistics.median(step_ms[1:])) if len(step_ms) > 1 else None


def warm_up(model, ids: torch.Tensor, new_tokens: int, budget_s: float, device: torch.device,
            tolerance: float = 0.05, max_runs: int = 4) -> list[float]:
    """Untimed generations of the timed length until the host and device are in a steady state: until two runs in a
    row have median decode steps within ``tolerance`` of each other, at most ``max_runs`` runs. Returns each run's
    median decode step (ms). One run was not enough: right after :func:`artifact.engine.offload.offload` pinned the
    slab, the first arms ran 1.2-1.5x slower for some seconds (E10 at commit fd58447)."""
    medians: list[float] = []
    for _ in range(max(max_runs, 1)):
        timer = StepTimer(model, device)
        try:
            generate(model, ids, new_tokens, budget_s)
        finally:
            timer.close()
        med = decode_median(timer.ms)
        if med is None:
            break
        medians.append(med)
        if len(medians) >= 2 and abs(medians[-1] - medians[-2]) <= tolerance * min(medians[-2:]):
            break
    return medians


def phase_figures(step_ms: list, step_tokens: list) -> dict:
    """Prefill = the first forward pass, decode = every later one."""
    out = {"prefill_tokens": None, "prefill_ms": None, "prefill_tokens_per_s": None, "decode_tokens": 0,
           "decode_ms": None, "decode_tokens_per_s": None, "ms_per_token": None, "ms_per_token_p90": None}
    if not step_ms:
        return out
    out["prefill_tokens"] = int(step_tokens[0])
    out["prefill_ms"] = float(step_ms[0])
    out["prefill_tokens_per_s"] = step_tokens[0] / (step_ms[0] / 1e3) if step_ms[0] > 0 else None
    dec, dtok = step_ms[1:], step_tokens[1:]
    if dec:
        out["decode_tokens"] = int(sum(dtok))
        out["decode_ms"] = float(sum(dec))
        out["decode_tokens_per_s"] = sum(dtok) / (sum(dec) / 1e3)
        out["ms_per_token"] = float(statistics.median(dec))
        out["ms_per_token_p90"] = float(np.percentile(dec, 90))
    return out


def pooled_phase_figures(runs: list[tuple[list, list]]) -> dict:
    """:func:`phase_figures` over several runs of the same arm (``(step_ms, step_tokens)`` each): prefill the median
    of the runs' first forward passes, decode from every run's decode steps pooled (tokens and time summed over the
    runs); ``runs`` and ``ms_per_token_runs`` (each run's median decode step, ``;``-separated) show the spread."""
    out = phase_figures(*runs[0])
    pre = [ms[0] for ms, _ in runs if ms]
    if not pre:
        return {**out, "runs": len(runs), "ms_per_token_runs": ""}
    out["prefill_ms"] = float(statistics.median(pre))
    out["prefill_tokens_per_s"] = out["prefill_tokens"] / (out["prefill_ms"] / 1e3) if out["prefill_ms"] > 0 else None
    dec = [m for ms, _ in runs for m in ms[1:]]
    dtok = [t for _, tok in runs for t in tok[1:]]
    per = [statistics.median(ms[1:]) for ms, _ in runs if len(ms) > 1]
    if dec:
        out["decode_tokens"], out["decode_ms"] = int(sum(dtok)), float(sum(dec))
        out["decode_tokens_per_s"] = sum(dtok) / (sum(dec) / 1e3)
        out["ms_per_token"] = float(statistics.median(dec))
        out["ms_per_token_p90"] = float(np.percentile(dec, 90))
    return {**out, "runs": len(runs), "ms_per_token_runs": ";".join(f"{m:.3f}" for m in per)}


def digest(tokens: torch.Tensor) -> str:
    return hashlib.sha1(json.dumps(tokens.cpu().tolist()).encode()).hexdigest()[:16]


def d2h_idle_us(device: torch.device, K: int, repeats: int = 50) -> float:
    """Host time of one device-to-host read of a [1, 3K] routing tensor with nothing else queued: the floor of the
    per-layer sync (the live run's ``sync_us`` adds the wait for the layer's queued device work)."""
    x = torch.zeros(1, 3 * K, device=device)
    _sync(device)
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        x.cpu()
        ts.append((time.perf_counter() - t0) * 1e6)
    return float(statistics.median(ts))


# --------------------------------------------------------------------------------------------------------------
# The simulator beside the live runs
# --------------------------------------------------------------------------------------------------------------


def measured_profile(base, spec, device: torch.device, quick: bool):
    """The base profile with this machine's copy table at the expert size and a COMPUTE grid for ``spec``."""
    from artifact.measure.calibrate import measure_copy, measure_ffn

    copy_table = base.copy_table
    if device.type == "cuda":
        b = spec.expert_bytes
        copy_table = tuple(measure_copy(device, sorted({1_000_000, b // 2, b, 4 * b, 64_000_000}), 20))
    g_exp = [n for n in ((1, 2) if quick else (1, 2, 4, 8, 16, 32, 64, 128)) if n <= spec.experts]
    g_tok = [1, 4] if quick else [1, 2, 4, 8, 16, 64]
    rows = []
    for n in g_exp:
        tab, _, _ = measure_ffn(spec, device, spec.dtype, g_tok, 3 if quick else 5, group=n)
        rows.append([ms * n for _, ms in tab])
    grid = {"experts": g_exp, "tokens": g_tok, "ms": rows}
    return replace(base, copy_table=copy_table, compute_tables={**base.compute_tables, spec.name: grid},
                   ffn_tables={**base.ffn_tables, spec.name: tuple((t, rows[0][i]) for i, t in enumerate(g_tok))},
                   description=f"{base.description}; copy table and the COMPUTE grid of {spec.name} measured by E10 "
                               f"on {'this GPU' if device.type == 'cuda' else 'the CPU (copy table: the base one)'}")


def step_ms_of(plan, workload, tl) -> list[float]:
    """Per step of a simulated plan: end of its last NON-MoE part or COMPUTE minus the previous step's."""
    L = plan.layers
    comp_step = plan.comp_ls.astype(np.int64) // L
    ends = []
    for s in range(plan.steps):
        e = float(tl.nonmoe_end[s * L:(s + 1) * L].max())
        sel = comp_step == s
        if sel.any():
            e = max(e, float(tl.comp_end[sel].max()))
        ends.append(e)
    return np.diff(np.concatenate([[0.0], ends])).tolist()


def fit_nonmoe(profile, report):
    """NON-MoE ms per layer at the prefill and decode token counts, so that simulating the ``gpu_only`` run's plan
    gives its measured step times (the COMPUTEs timed by the profile's grid, no copies)."""
    plan = report.plan
    spec = plan.model
    L = plan.layers
    per_step = []
    for s, ms in enumerate(report.step_ms):
        c = plan.comp_ls.astype(np.int64) // L == s
        off = plan.comp_offsets
        n_exp = np.diff(off)[c]
        tok = np.add.reduceat(plan.use_tokens.astype(float), off[:-1])[c] if plan.use_tokens.size else n_exp * 0
        comp = float(profile.compute_ms(spec.name, n_exp, tok).sum()) if n_exp.size else 0.0
        per_step.append(max(ms - comp, 0.0) / L)
    pts = {int(report.step_tokens[0]): per_step[0]}
    if len(per_step) > 1:
        pts[int(report.step_tokens[1])] = float(statistics.median(per_step[1:]))
    table = sorted([int(t), float(v)] for t, v in pts.items())
    if len(table) == 1:
        table.append([table[0][0] + 1, table[0][1]])
    extra = dict(profile.extra) if isinstance(profile.extra, dict) else {}
    extra["nonmoe_tables"] = {**extra.get("nonmoe_tables", {}), spec.name: table}
    extra["e10_nonmoe_fit"] = f"fitted to the live gpu_only run of {spec.name}: {table} (tokens, ms per layer)"
    return replace(profile, name=f"{profile.name}+nonmoe-fit", extra=extra,
                   description=f"{profile.description}; NON-MoE per layer fitted to the live gpu_only run of "
                               f"{spec.name}")


def simulate_report(report, profile) -> dict:
    """Replay the run's trace: plan again (the counts must equal the live run's) and time it on ``profile``."""
    from artifact.planner import plan as make_plan
    from artifact.runtime.live import replay_workload
    from artifact.runtime.simulator import simulate

    w = replay_workload(report.trace, report.model)
    p = make_plan(w, report.strategy, report.extra["requested_cache"], report.protocol,
                  0, report.extra["hardware_profile"])
    match = count_metrics(p) == count_metrics(report.plan)
    steps = step_ms_of(p, w, simulate(p, w, profile))
    dec = steps[1:]
    return {"sim_prefill_ms": steps[0], "sim_ms_per_token": float(statistics.median(dec)) if dec else None,
            "replay_counts_match": match, "sim_profile": profile.name}


def accelerate_dispatch(model, arm: str, device: torch.device) -> int:
    """Hand ``model`` to accelerate: ``cpu_offload`` (every module), or ``dispatch_model`` with an explicit map that
    puts every experts module on ``cpu`` and the rest on the device; returns the bytes accelerate copies per forward."""
    from accelerate import cpu_offload, dispatch_model

    from artifact.engine.hf_experts import moe_layers

    _, layers, encoder = moe_layers(model)
    experts = {m.site.block_path + ".experts" for m in layers + encoder}
    if arm == "accelerate_cpu_offload":
        nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
        cpu_offload(model, execution_device=device)
        return nbytes
    main = 0 if device.type == "cuda" else "cpu"
    dmap = {}

    def walk(mod, path):
        if path in experts:
            dmap[path] = "cpu"
            return
        if not any(e == path or e.startswith(path + ".") or not path for e in experts):
            dmap[path] = main
            return
        for n, _ in mod.named_parameters(recurse=False):
            dmap[f"{path}.{n}"] = main
        for n, _ in mod.named_buffers(recurse=False):
            dmap[f"{path}.{n}"] = main
        for n, child in mod.named_children():
            walk(child, f"{path}.{n}" if path else n)

    walk(model, "")
    nbytes = 0
    for path in experts:
        mod = model.get_submodule(path)
        mod.to("cpu")  # the weights accelerate keeps on the host (pageable, as from_pretrained leaves them)
        nbytes += sum(p.numel() * p.element_size() for p in mod.parameters())
    if device.type == "cuda":
        torch.cuda.empty_cache()
    dispatch_model(model, device_map=dmap, main_device=main, force_hooks=True)
    return nbytes
