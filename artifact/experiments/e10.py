"""E10: real ``transformers`` MoE models offloaded, tokens/s by strategy and cache, against the tools people use.

``python -m artifact.experiments.e10 --out DIR`` (a GPU; ``--quick``: tiny configs on the CPU, the code path only).

For each model (full-size configs with random weights, bf16, built directly on the GPU: OLMoE-1B-7B, then
Qwen3-30B-A3B), in this order, each arm one row of ``DIR/e10.csv``:

1. ``resident``: the plain model, every weight on the GPU (transformers' own experts kernels).
2. ``offload``: :func:`artifact.engine.offload.offload`, every routed expert in one pinned host slab. First
   ``gpu_only`` (every expert in a device slot: the engine's own overhead, and the point the simulator is calibrated
   on), then ``on_demand`` and ``intelligent_dedup`` at caches of 10, 25 and 50% of the routed experts.
3. ``accelerate_device_map``: ``accelerate.dispatch_model`` with an explicit device map, every experts module on
   ``cpu`` (offloaded: copied to the GPU on each forward), everything else on GPU 0. (``infer_auto_device_map`` with
   a ``max_memory`` fills the GPU in module order and never splits a fused experts tensor, so an explicit map is how
   "experts off the GPU" is said to accelerate.)
4. ``accelerate_cpu_offload``: ``accelerate.cpu_offload``, every module's weights copied to the GPU at its forward.

Each arm generates greedily from one seeded random prompt (``prompt_tokens``, batch 1): the first forward pass is
prefill, every later one decodes one token; each forward is timed with the device synchronised at both ends. The
resident and offload arms run ``passes`` times (3): the resident one back to back, the offload ones as further sweeps in
alternating order (reverse, forward), so that a slow spell of a shared host lands on different arms, and one slow run of
three leaves the pooled median among the other two; a row pools the decode steps of its runs
and keeps each run's median (``ms_per_token_runs``); a later run must generate the same tokens (its plan may differ by a
few near-tied experts: bf16 sums in a different order can flip a router's choice without changing a token; a row's
counts are its first run's). Every model's resident arm, and its offload arms, first run untimed generations of the
timed length until two in a row agree within 5% (at most 4; each one's median decode step is in
``warmup_ms_per_token``): after a 2-token warm-up, the first timed run of a model's first arm (resident, then
``gpu_only``) was 1.5-2.9x slower per decode step than its second run (the run at commit 8d247e3), and after one untimed
generation, the offload arms that ran in the first seconds after pinning the slab were still 1.1-1.4x slower (the run at
fd58447). The slow accelerate arms decode only ``accel_new_tokens - 1`` tokens (the row says how many). Every arm is
bounded in time (a stopping criterion ends its generation at ``arm_budget_s``) and the whole run by ``budget_s``: what
does not fit is a row with the reason, and so is any arm that fails (``note``): nothing stops the grid.

Offload rows also carry the run's decisions (hits, loads, bytes) and host costs per layer (the device-to-host read of
the routing, a sync; the strategy's decision; the issue of copies and kernels), whether its tokens equal the resident
model's, and ``sim_*``: the simulator's times for the run's own plan, replayed from the trace the run recorded (the
replay's counts must equal the live run's: ``replay_counts_match``). The strategies plan with the committed H200 profile
plus this machine's copy table and the COMPUTE grid of the model's expert shape, measured here
(``DIR/e10_plan_profile_<model>.json``: the flagship reads those figures); the simulator times with that profile and the
NON-MoE time per layer fitted to the fastest run of ``gpu_only`` (the lowest median decode step)
(``DIR/e10_sim_profile_<model>.json``: the model's attention, norms, routers and the engine's per-layer host cost, which
no kernel table holds). Calibrated on the run without transfers, it predicts every run with them. What it does not
model: the sync at every MoE layer (the host cannot run ahead of the device, so a slower decision shows up in full; see
``plan_us_per_layer``).

The CSV is rewritten atomically after every row; a rerun skips the rows already there.
"""

from __future__ import annotations

import csv
import io
import json
import math
import platform
import statistics
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from artifact.atomicfile import atomic_write_text
from artifact.core.errors import Unrunnable
from artifact.experiments.e10_harness import (
    StepTimer,
    accelerate_dispatch,
    build,
    d2h_idle_us,
    decode_median,
    digest,
    fit_nonmoe,
    free,
    generate,
    measured_profile,
    phase_figures,
    pooled_phase_figures,
    simulate_report,
    warm_up,
)

CSV_NAME = "e10.csv"
# Full-size configs (the fields of each model's config.json; weights are random).
# allenai/OLMoE-1B-7B-0924: hidden 2048, 16 layers, 64 experts of 1024, top-8, no top-k renormalisation.
# Qwen/Qwen3-30B-A3B config.json (transformers_version 4.51.0): every one of 48 layers MoE, 128 experts of 768, top-8.
MODELS: dict[str, tuple[str, dict]] = {
    "olmoe-1b-7b": ("olmoe", {
        "hidden_size": 2048, "intermediate_size": 1024, "num_hidden_layers": 16, "num_attention_heads": 16,
        "num_key_value_heads": 16, "num_experts": 64, "num_experts_per_tok": 8, "norm_topk_prob": False,
        "vocab_size": 50304, "max_position_embeddings": 4096, "rope_theta": 10000.0, "rms_norm_eps": 1e-05,
        "hidden_act": "silu", "tie_word_embeddings": False, "pad_token_id": 1, "eos_token_id": 50279,
        "bos_token_id": None}),
    "qwen3-30b-a3b": ("qwen3_moe", {
        "hidden_size": 2048, "intermediate_size": 6144, "moe_intermediate_size": 768, "num_hidden_layers": 48,
        "num_attention_heads": 32, "num_key_value_heads": 4, "head_dim": 128, "num_experts": 128,
        "num_experts_per_tok": 8, "norm_topk_prob": True, "decoder_sparse_step": 1, "mlp_only_layers": [],
        "vocab_size": 151936, "max_position_embeddings": 40960, "rope_theta": 1000000.0, "rms_norm_eps": 1e-06,
        "hidden_act": "silu", "tie_word_embeddings": False, "bos_token_id": 151643, "eos_token_id": 151645,
        "attention_bias": False, "use_sliding_window": False, "sliding_window": None}),
}
QUICK_MODELS = ("tiny-olmoe", "tiny-qwen3-moe")
FRACTIONS = (0.10, 0.25, 0.50)
STRATEGIES = ("on_demand", "intelligent_dedup")

FIELDS = [
    "experiment", "point_id", "model", "arm", "strategy", "cache_experts", "cache_fraction", "routed_experts",
    "batch", "prompt_tokens", "new_tokens_asked",
    "prefill_tokens", "prefill_ms", "prefill_tokens_per_s", "decode_tokens", "decode_ms", "decode_tokens_per_s",
    "ms_per_token", "ms_per_token_p90", "runs", "ms_per_token_runs", "warmup_ms_per_token", "tokens_sha1",
    "tokens_match_resident",
    "requests", "unique_requests", "hits", "hit_rate", "loads", "demand_loads", "prefetch_issued", "prefetch_used",
    "bytes_h2d", "bytes_copied", "bytes_per_forward",
    "sync_us_per_layer", "plan_us_per_layer", "issue_us_per_layer", "d2h_idle_us",
    "sim_prefill_ms", "sim_ms_per_token", "sim_error", "replay_counts_match", "plan_profile", "sim_profile",
    "setup_s", "wall_s", "note",
    "device", "dtype", "gpu", "driver", "torch", "cuda", "transformers", "accelerate", "package_version",
    "git_commit", "host_cpu", "date",
]


@dataclass(frozen=True)
class E10Config:
    models: tuple = tuple(MODELS)
    fractions: tuple = FRACTIONS
    strategies: tuple = STRATEGIES
    prompt_tokens: int = 128
    new_tokens: int = 32  # offload and resident arms: 1 prefill + new_tokens - 1 decode forward passes
    accel_new_tokens: int = 3  # accelerate arms: 1 prefill + 2 decode forward passes
    batch: int = 1
    dtype: str = "bfloat16"
    device: str = "cuda"
    seed: int = 0
    budget_s: float = 520.0  # the whole run: the last arm may overrun it by one arm (the device limit is 600 s)
    arm_budget_s: float = 60.0  # one arm's generation
    passes: int = 3  # resident and offload arms run this often (offload: later passes alternately reversed); pooled
    hardware: str = "h200"
    quick: bool = False


def quick_config(device: str = "cpu", models: tuple = QUICK_MODELS) -> E10Config:
    return E10Config(models=models, prompt_tokens=8, new_tokens=4, accel_new_tokens=3, dtype="float32",
                     device=device, budget_s=300.0, arm_budget_s=30.0, quick=True)


# --------------------------------------------------------------------------------------------------------------
# Rows
# --------------------------------------------------------------------------------------------------------------


class Rows:
    """``DIR/e10.csv``: rows by point id, rewritten atomically after every change."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows: dict[str, dict] = {}
        if path.is_file():
            with open(path, newline="") as fh:
                for r in csv.DictReader(fh):
                    self.rows[r["point_id"]] = r

    def has(self, pid: str) -> bool:
        """A row that ran (or failed, or was refused); a row skipped for time runs again."""
        r = self.rows.get(pid)
        return r is not None and not str(r.get("note") or "").startswith("skipped")

    def put(self, row: dict) -> None:
        self.rows[row["point_id"]] = row
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=FIELDS, extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        for r in self.rows.values():
            w.writerow({k: _cell(r.get(k)) for k in FIELDS})
        atomic_write_text(self.path, buf.getvalue())


def _ms_list(ms: list[float]) -> str:
    return ";".join(f"{m:.3f}" for m in ms)


def _cell(v) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return "" if not math.isfinite(v) else repr(round(v, 6))
    return str(v)


def environment_columns(device: torch.device, dtype: str) -> dict:
    from artifact.measure.environment import environment, installed_version, utc_now

    env = dict(environment())
    return {**{k: env.get(k, "") for k in ("gpu", "driver", "torch", "cuda", "package_version", "git_commit")},
            "transformers": installed_version("transformers") or "", "accelerate": installed_version("accelerate")
            or "not installed", "host_cpu": platform.processor() or platform.machine(), "device": device.type,
            "dtype": dtype, "date": utc_now()}


# --------------------------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------------------------


def model_config(name: str):
    from transformers import AutoConfig

    from artifact.engine.hf_models import TINY_CONFIGS

    if name in MODELS:
        mt, fields = MODELS[name]
        return AutoConfig.for_model(mt, **fields)
    if name in TINY_CONFIGS:
        mt, fields = TINY_CONFIGS[name]
        return AutoConfig.for_model(mt, **fields)
    raise KeyError(f"E10: unknown model {name!r}; models: {', '.join(list(MODELS) + list(QUICK_MODELS))}")


def _host_us(rep) -> dict[str, list]:
    """A live run's host times per layer-step (us), by the row field their median goes to."""
    return {"sync_us_per_layer": rep.sync_us, "plan_us_per_layer": rep.plan_us,
            "issue_us_per_layer": [t * 1e6 for t in rep.issued.issue_s]}


# --------------------------------------------------------------------------------------------------------------
# The arms
# --------------------------------------------------------------------------------------------------------------


class Clock:
    def __init__(self, budget_s: float) -> None:
        self.t0 = time.perf_counter()
        self.budget = budget_s

    def left(self) -> float:
        return self.budget - (time.perf_counter() - self.t0)


def _err(exc: BaseException) -> str:
    if isinstance(exc, Unrunnable):
        return f"refused: {exc}"
    msg = str(exc).splitlines()[0] if str(exc) else ""
    return f"error: {type(exc).__name__}: {msg[:300]}"


def _log(msg: str) -> None:
    print(f"[e10] {msg}", file=sys.stderr, flush=True)


class ModelRun:
    """Every arm of one model."""

    def __init__(self, name: str, cfg: E10Config, rows: Rows, clock: Clock, out_dir: Path) -> None:
        from artifact.engine.hf_models import config_top_k

        self.name, self.cfg, self.rows, self.clock, self.out_dir = name, cfg, rows, clock, out_dir
        self.config = model_config(name)
        self.device = torch.device(cfg.device)
        self.dtype = {"bfloat16": torch.bfloat16, "float32": torch.float32, "float16": torch.float16}[cfg.dtype]
        self.K = config_top_k(self.config)
        gen = torch.Generator().manual_seed(cfg.seed + 17)
        vocab = int(self.config.vocab_size)
        self.ids = torch.randint(2, vocab, (cfg.batch, cfg.prompt_tokens), generator=gen).to(self.device)
        self.env = environment_columns(self.device, cfg.dtype)
        self.L = self.E = None
        self.ref_sha = None
        self.ref_tokens: torch.Tensor | None = None

    def matches(self, out: torch.Tensor) -> bool | None:
        """Whether generated tokens equal the resident model's (over the tokens both generated)."""
        if self.ref_tokens is None:
            return None
        new = out[:, self.ids.shape[1]:].cpu()
        n = min(new.shape[1], self.ref_tokens.shape[1])
        return bool(n > 0 and torch.equal(new[:, :n], self.ref_tokens[:, :n]))

    def base(self, arm: str, strategy: str = "", cache: int | None = None) -> dict:
        routed = self.L * self.E if self.L else None
        frac = (cache / routed) if cache is not None and routed else None
        pid = f"{self.name}|{arm}|{strategy or '-'}|{cache if cache is not None else '-'}|b{self.cfg.batch}"
        return {"experiment": "E10", "point_id": pid, "model": self.name, "arm": arm, "strategy": strategy,
                "cache_experts": cache, "cache_fraction": frac, "routed_experts": routed, "batch": self.cfg.batch,
                "prompt_tokens": self.cfg.prompt_tokens, **self.env}

    def _shape(self) -> None:
        from artifact.engine.hf_models import model_class

        with torch.device("meta"):
            m = model_class(self.config).from_config(self.config, dtype=self.dtype)
        from artifact.engine.offload import inspect_model

        _, layers, _, lay, spec = inspect_model(m)
        self.L, self.E, self.spec = len(layers), lay.experts, spec
        del m

    def caches(self) -> list[tuple[str, int]]:
        total = self.L * self.E
        out = [("gpu_only", total)]
        for f in self.cfg.fractions:
            c = max(self.K, int(round(f * total)))
            out += [(s, c) for s in self.cfg.strategies]
        return out

    def run(self) -> None:
        self._shape()
        offload_points = [self.base("offload", s, c)["point_id"] for s, c in self.caches()]
        pending_res = not self.rows.has(self.base("resident", "", self.L * self.E)["point_id"])
        pending_off = [p for p in offload_points if not self.rows.has(p)]
        if pending_res or pending_off:
            self.resident_and_offload(pending_res, bool(pending_off))
        else:
            self.ref_sha = self.rows.rows[self.base("resident", "", self.L * self.E)["point_id"]].get("tokens_sha1")
        for arm in ("accelerate_device_map", "accelerate_cpu_offload"):
            row = self.base(arm)
            if not self.rows.has(row["point_id"]):
                self.accelerate(arm, row)

    # --- resident, then offload on the same model ---------------------------------------------------------------
    def resident_and_offload(self, resident_row: bool, offload_rows: bool) -> None:
        cfg = self.cfg
        t0 = time.perf_counter()
        if self.clock.left() < 20:
            for s, c in self.caches():
                self._skip(self.base("offload", s, c))
            self._skip(self.base("resident", "", self.L * self.E))
            return
        try:
            model = build(self.config, self.dtype, self.device, cfg.seed)
        except Exception as exc:  # noqa: BLE001 - a row with the reason, never a crash of the grid
            for s, c in self.caches():
                self.rows.put({**self.base("offload", s, c), "note": _err(exc)})
            self.rows.put({**self.base("resident", "", self.L * self.E), "note": _err(exc)})
            return
        build_s = time.perf_counter() - t0
        _log(f"{self.name}: built in {build_s:.1f} s")
        # 1. resident
        row = self.base("resident", "", self.L * self.E)
        try:
            warm = warm_up(model, self.ids, cfg.new_tokens, cfg.arm_budget_s, self.device)
            _log(f"{self.name}: resident warm-up, median decode step per run: {_ms_list(warm)} ms")
            runs, t1 = [], time.perf_counter()
            for _ in range(max(cfg.passes, 1)):
                timer = StepTimer(model, self.device)
                out = generate(model, self.ids, cfg.new_tokens, cfg.arm_budget_s)
                timer.close()
                runs.append((timer.ms, timer.tokens))
            wall = time.perf_counter() - t1
            self.ref_tokens = out[:, self.ids.shape[1]:].cpu()
            self.ref_sha = digest(self.ref_tokens)
            row.update(pooled_phase_figures(runs))
            row.update({"new_tokens_asked": cfg.new_tokens, "tokens_sha1": self.ref_sha, "setup_s": build_s,
                        "warmup_ms_per_token": _ms_list(warm),
                        "wall_s": wall, "note": "transformers' own experts implementation "
                        f"({getattr(model.config, '_experts_implementation', 'eager')}), every weight on the device"})
        except Exception as exc:  # noqa: BLE001
            row["note"] = _err(exc)
        if resident_row or not self.rows.has(row["point_id"]):
            self.rows.put(row)
        _log(f"{self.name}: resident {row.get('decode_tokens_per_s')} tok/s decode")
        if offload_rows:
            self.offload_arms(model)
        free(model)

    def offload_arms(self, model) -> None:
        from artifact.engine.offload import offload
        from artifact.runtime.hardware import load_profile, save_profile

        cfg = self.cfg
        points = self.caches()
        try:  # this machine's copy table and the model's COMPUTE grid: what the strategies plan with, and time by
            hw = measured_profile(load_profile(cfg.hardware), self.spec, self.device, cfg.quick)
            hw = replace(hw, name=f"{hw.name}+e10:{self.spec.name}")
            save_profile(hw, self.out_dir / f"e10_plan_profile_{self.name}.json")
        except Exception as exc:  # noqa: BLE001 - plan with the committed profile as it is
            _log(f"{self.name}: no measured profile ({_err(exc)}); planning with {cfg.hardware}")
            hw = load_profile(cfg.hardware)
        t0 = time.perf_counter()
        try:
            model = offload(model, points[0][0], points[0][1], self.device, hw)
        except Exception as exc:  # noqa: BLE001
            for s, c in points:
                self.rows.put({**self.base("offload", s, c), "note": _err(exc)})
            return
        session = model.expert_offload
        setup_s = time.perf_counter() - t0
        _log(f"{self.name}: offloaded in {setup_s:.1f} s (slab pinned: {session.slab.pinned})")
        idle_us = d2h_idle_us(self.device, self.K)
        warm: list[float] = []
        try:  # kernels, allocator, clocks, and the host's work after pinning the slab
            warm = warm_up(model, self.ids, cfg.new_tokens, cfg.arm_budget_s, self.device)
            _log(f"{self.name}: offload warm-up, median decode step per run: {_ms_list(warm)} ms")
        except Exception as exc:  # noqa: BLE001
            _log(f"warm-up failed: {_err(exc)}")
        reports = {}
        for strategy, cache in points:
            row = self.base("offload", strategy, cache)
            if self.rows.has(row["point_id"]) and strategy != "gpu_only":
                continue
            if self.clock.left() < 10:
                self._skip(row)
                continue
            try:
                session.configure(strategy, cache)
                t1 = time.perf_counter()
                out = generate(model, self.ids, cfg.new_tokens, cfg.arm_budget_s)
                wall = time.perf_counter() - t1
                rep = session.last
                rep.extra["hardware_profile"] = hw
                s = rep.summary()
                row.update(pooled_phase_figures([(rep.step_ms, rep.step_tokens)]))
                sha = digest(out[:, self.ids.shape[1]:])
                row.update({k: s[k] for k in ("requests", "unique_requests", "hits", "hit_rate", "loads",
                                              "demand_loads", "prefetch_issued", "prefetch_used", "bytes_h2d",
                                              "bytes_copied", "sync_us_per_layer", "plan_us_per_layer",
                                              "issue_us_per_layer")})
                row.update({"new_tokens_asked": cfg.new_tokens, "tokens_sha1": sha, "d2h_idle_us": idle_us,
                            "plan_profile": hw.name, "warmup_ms_per_token": _ms_list(warm),
                            "tokens_match_resident": self.matches(out),
                            "setup_s": setup_s, "wall_s": wall, "cache_experts": rep.cache_experts,
                            "note": "calibration point of the sim_* columns" if strategy == "gpu_only" else ""})
                reports[strategy, cache] = (rep, row)
            except Exception as exc:  # noqa: BLE001
                row["note"] = _err(exc)
            self.rows.put(row)
            _log(f"{self.name}: {strategy} c={cache}: {row.get('decode_tokens_per_s')} tok/s decode, "
                 f"{row.get('prefill_tokens_per_s')} tok/s prefill {row.get('note', '')}")
        for k in range(max(cfg.passes, 1) - 1):
            self.later_pass(session, model, reports, reverse=k % 2 == 0)
        self.simulate(reports, hw)
        session.close()
        free(session)

    def later_pass(self, session, model, reports: dict, reverse: bool) -> None:
        """Run every arm of the first pass again, in reverse order or not (a slow spell of the host then lands on
        other arms than in the pass before), and pool its times into the arm's row; the tokens must repeat."""
        arms = list(reports.items())
        for (strategy, cache), (rep, row) in (reversed(arms) if reverse else arms):
            if self.clock.left() < 10:
                row["note"] = (row.get("note", "") + "; later pass skipped for time").lstrip("; ")
                continue
            try:
                session.configure(strategy, cache)
                out = generate(model, self.ids, self.cfg.new_tokens, self.cfg.arm_budget_s)
                again = session.last
                same = digest(out[:, self.ids.shape[1]:]) == row["tokens_sha1"]
                if strategy == "gpu_only":  # the simulator is fitted to its fastest run
                    row.setdefault("_reports", [rep]).append(again)
                runs = row.setdefault("_runs", [(rep.step_ms, rep.step_tokens)])
                runs.append((again.step_ms, again.step_tokens))
                row.update(pooled_phase_figures(runs))
                host = row.setdefault("_host", _host_us(rep))
                for k, xs in _host_us(again).items():
                    host[k] = host[k] + xs
                    row[k] = statistics.median(host[k])
                if not same:
                    row["note"] = (row.get("note", "") + "; a later run generated other tokens").lstrip("; ")
            except Exception as exc:  # noqa: BLE001
                row["note"] = (row.get("note", "") + f"; later pass: {_err(exc)}").lstrip("; ")
            self.rows.put(row)

    def simulate(self, reports: dict, hw) -> None:
        from artifact.runtime.hardware import save_profile

        cal = reports.get(("gpu_only", self.L * self.E))
        if cal is None:
            return
        runs = cal[1].get("_reports", [cal[0]])
        # the warmest run: the engine's own cost
        k = min(range(len(runs)), key=lambda i: decode_median(runs[i].step_ms) or math.inf)
        if len(runs) > 1:
            cal[1]["note"] = f"calibration point of the sim_* columns (fitted to its run {k + 1} of {len(runs)}, " \
                             f"the {'faster' if len(runs) == 2 else 'fastest'})"
        try:
            prof = fit_nonmoe(hw, runs[k])
            save_profile(prof, self.out_dir / f"e10_sim_profile_{self.name}.json")
        except Exception as exc:  # noqa: BLE001
            _log(f"{self.name}: no simulator profile: {_err(exc)}")
            return
        for (_strategy, _cache), (rep, row) in reports.items():
            try:
                row.update(simulate_report(rep, prof))
                live = row.get("ms_per_token")
                if live and row.get("sim_ms_per_token") is not None:
                    row["sim_error"] = row["sim_ms_per_token"] / live - 1.0
            except Exception as exc:  # noqa: BLE001
                row["note"] = (row.get("note", "") + f"; sim {_err(exc)}").lstrip("; ")
            self.rows.put(row)

    # --- accelerate ---------------------------------------------------------------------------------------------
    def accelerate(self, arm: str, row: dict) -> None:
        cfg = self.cfg
        try:
            import accelerate  # noqa: F401
        except ImportError:
            self.rows.put({**row, "note": "refused: accelerate is not installed"})
            return
        expert_bytes = self.L * self.E * self.spec.expert_bytes
        est = 3 * expert_bytes / 5e9 + 20  # pageable copies at ~5 GB/s per forward pass, plus building
        if self.clock.left() < min(est * 1.5, cfg.arm_budget_s + 30):
            self._skip(row)
            return
        model = None
        t0 = time.perf_counter()
        try:
            model = build(self.config, self.dtype, self.device, cfg.seed)
            bytes_fwd = accelerate_dispatch(model, arm, self.device)
            setup_s = time.perf_counter() - t0
            timer = StepTimer(model, self.device)
            t1 = time.perf_counter()
            out = generate(model, self.ids, cfg.accel_new_tokens, cfg.arm_budget_s)
            wall = time.perf_counter() - t1
            timer.close()
            sha = digest(out[:, self.ids.shape[1]:])
            row.update(phase_figures(timer.ms, timer.tokens))
            row.update({"new_tokens_asked": cfg.accel_new_tokens, "tokens_sha1": sha, "setup_s": setup_s,
                        "wall_s": wall, "bytes_per_forward": bytes_fwd, "tokens_match_resident": self.matches(out),
                        "note": self._accelerate_note(arm)})
        except Exception as exc:  # noqa: BLE001
            row["note"] = _err(exc)
        self.rows.put(row)
        _log(f"{self.name}: {arm}: {row.get('decode_tokens_per_s')} tok/s decode {row.get('note', '')}")
        free(model)

    def _accelerate_note(self, arm: str) -> str:
        n = self.cfg.accel_new_tokens - 1
        where = "cpu (no GPU: the code path only)" if self.device.type != "cuda" else "GPU"
        if arm == "accelerate_cpu_offload":
            return f"accelerate.cpu_offload: every module's weights copied to the {where} at its forward; {n} decode " \
                   f"tokens timed"
        return f"accelerate.dispatch_model, explicit device map: experts modules on cpu (pageable, copied whole at " \
               f"each forward), the rest on the {where}; {n} decode tokens timed"

    def _skip(self, row: dict) -> None:
        if row["point_id"] not in self.rows.rows:
            self.rows.put({**row, "note": f"skipped: time budget ({max(self.clock.left(), 0):.0f} s left of "
                                          f"{self.cfg.budget_s:.0f} s)"})


def run_e10(out_dir: str | Path, cfg: E10Config | None = None) -> Path:
    """Run (or resume) E10 into ``out_dir/e10.csv``; returns its path."""
    cfg = cfg or E10Config()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dev = torch.device(cfg.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("E10: device cuda asked for but torch.cuda.is_available() is False; use --quick on a CPU")
    rows = Rows(out / CSV_NAME)
    clock = Clock(cfg.budget_s)
    (out / "e10_config.json").write_text(json.dumps({k: v for k, v in cfg.__dict__.items()}, indent=1,
                                                    default=str) + "\n")
    for name in cfg.models:
        _log(f"{name}: {clock.left():.0f} s left")
        try:
            ModelRun(name, cfg, rows, clock, out).run()
        except Exception as exc:  # noqa: BLE001 - one model failing leaves the other's rows
            _log(f"{name}: {_err(exc)}")
            rows.put({"experiment": "E10", "point_id": f"{name}|model|-|-|b{cfg.batch}", "model": name,
                      "arm": "model", "note": _err(exc)})
        free()
    return rows.path


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m artifact.experiments.e10", description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="folder of e10.csv (resumed if present)")
    ap.add_argument("--quick", action="store_true", help="tiny configs on the CPU (the code path only)")
    ap.add_argument("--device", default=None, help="cuda (default) or cpu")
    ap.add_argument("--models", nargs="*", default=None, help=f"models (default: {', '.join(MODELS)})")
    ap.add_argument("--budget-s", type=float, default=None, help="time budget of the whole run (default 520)")
    ap.add_argument("--new-tokens", type=int, default=None, help="tokens generated per offload/resident arm")
    args = ap.parse_args(argv)
    if args.quick:
        cfg = quick_config(args.device or "cpu", tuple(args.models) if args.models else QUICK_MODELS)
    else:
        cfg = E10Config(device=args.device or "cuda", models=tuple(args.models) if args.models else tuple(MODELS))
    if args.budget_s is not None:
        cfg = replace(cfg, budget_s=args.budget_s)
    if args.new_tokens is not None:
        cfg = replace(cfg, new_tokens=args.new_tokens)
    path = run_e10(args.out, cfg)
    print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
