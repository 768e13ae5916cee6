"""``python -m artifact <command>``: every command has ``--help`` with its options and defaults."""

from __future__ import annotations

import argparse
import json
import os
import sys

from artifact import __version__

# The grids `grid` can run (artifact.experiments.grids.GRIDS; listed here so --help needs no import).
GRID_NAMES = ("sim", "engine", "models", "cpu_engine", "real", "sensitivity", "ablation", "frontier", "horizon")


def _fmt(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.ArgumentDefaultsHelpFormatter


def _add_workload_args(p: argparse.ArgumentParser) -> None:
    from artifact.experiments.runs import DEFAULT_SEQUENCES, DEFAULT_TOKENS

    p.add_argument("--model", default=None,
                   help="model preset (default: the trace's model with --trace, else switch-base-128)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--trace", help="routing trace file (.npz), or vendored:NAME (a trace shipped with the package)")
    src.add_argument("--synthetic", action="store_true", help="use the calibrated synthetic generator (default)")
    p.add_argument("--sequences", type=int, default=DEFAULT_SEQUENCES, help="synthetic pool: sequences")
    p.add_argument("--tokens", type=int, default=DEFAULT_TOKENS, help="synthetic pool: mean tokens per sequence")
    p.add_argument("--batch", type=int, default=8, help="decode batch size")
    p.add_argument("--steps", type=int, default=256, help="decode steps (0 = until the pool drains)")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic pool and of randomised predictors")
    p.add_argument("--strategy", default="intelligent_dedup", help="strategy (see `list`)")
    p.add_argument("--cache-experts", type=int, default=128, help="GPU expert slots")
    p.add_argument("--protocol", choices=("batched", "per_item"), default="batched", help="batch accounting")
    p.add_argument("--hardware", default="h200", help="hardware profile name or JSON path")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def _workload(args):
    from artifact.experiments.runs import WorkloadSpec, load_trace, make_workload

    model, tr = args.model, None
    if args.trace:  # the trace's own model unless --model names another (None: the workload says which to name)
        tr = load_trace(WorkloadSpec(model, args.trace))
    elif model is None:
        model = "switch-base-128"
    ws = WorkloadSpec(model, args.trace, args.sequences, args.tokens, args.seed)
    return ws, make_workload(ws, args.batch, args.steps or None, trace=tr)


def _top_k(w) -> dict:
    """The workload's top-k (the trace's, authoritative) and the model's own, so a reduced top-k shows."""
    return {"top_k": w.model.top_k, "native_top_k": w.model.config_top_k}


def _print_row(row: dict, as_json: bool) -> None:
    if as_json:  # strict JSON: what was not measured is null (the row says why), never NaN or Infinity
        from artifact.atomicfile import json_text

        print(json_text(row, indent=None))  # a stray NaN or infinity: null, its key listed in null_reasons
        return
    width = max(len(k) for k in row)
    for k, v in row.items():
        print(f"{k:<{width}}  {v:.4g}" if isinstance(v, float) else f"{k:<{width}}  {'-' if v is None else v}")


def cmd_simulate(args) -> int:
    from artifact.experiments.runs import simulate_one

    ws, w = _workload(args)
    row, _ = simulate_one(w, args.strategy, args.cache_experts, args.protocol, args.seed, args.hardware)
    row = {"workload": ws.label, **row, **_top_k(w)}
    _print_row(row, args.json)
    return 0


def cmd_run(args) -> int:
    from artifact.experiments.runs import engine_one

    ws, w = _workload(args)
    row, _, _ = engine_one(w, args.strategy, args.cache_experts, args.protocol, args.seed, args.hardware,
                           device=args.device, repeats=args.repeats, dtype=args.dtype,
                           graph=False if args.eager else "auto")
    row = {"workload": ws.label, "device": args.device, **row, **_top_k(w)}
    _print_row(row, args.json)
    return 0


def cmd_calibrate(args) -> int:
    from artifact.measure.calibrate import calibrate

    prof = calibrate(args.device, args.models or None, args.output, quick=args.quick, name=args.name,
                     dtype=args.dtype)
    print(f"{prof.name}: {prof.description}; copy {prof.copy_bandwidth_gbps:.1f} GB/s fitted, latency "
          f"{prof.copy_latency_ms * 1e3:.1f} us; written to {args.output}", file=sys.stderr)
    return 0


def cmd_grid(args) -> int:
    from artifact.experiments import grids
    from artifact.experiments.runner import run_grid

    path = run_grid(grids.GRIDS[args.name](args.quick), args.out, args.hardware, jobs=args.jobs, device=args.device,
                    engine_graph=False if args.eager else "auto")
    print(f"wrote {path}", file=sys.stderr)
    return 0


def cmd_report(args) -> int:
    from artifact.report.build import build_report

    print(f"wrote {build_report(args.results)}", file=sys.stderr)
    return 0


def cmd_reproduce(args) -> int:
    from artifact.reproduce import reproduce

    reproduce(args.out, quick=args.quick, device=args.device, jobs=args.jobs, hardware=args.hardware,
              recalibrate=args.recalibrate)
    return 0


def cmd_list(args) -> int:
    from artifact.planner import strategies

    table = strategies()
    width = max(len(n) for n in table)
    for s in table.values():
        print(f"{s.name:<{width}}  {s.summary}  [source: {s.source}; predictor: {s.predictor}; "
              f"eviction: {s.eviction}; sees: {s.sees}; {s.role}; module {s.module}]")
    return 0


def cmd_trace_generate(args) -> int:
    from artifact.traces.synthetic import generate
    from artifact.traces.trace import save

    tr = generate(args.model, sequences=args.sequences, tokens=args.tokens, seed=args.seed)
    save(tr, args.output)
    print(f"wrote {args.output}: {tr.num_sequences} sequences, {tr.num_tokens} tokens, {tr.layers} layers, "
          f"top-{tr.top_k}", file=sys.stderr)
    return 0


def cmd_trace_inspect(args) -> int:
    from artifact.traces.stats import render_text, trace_stats
    from artifact.traces.vendored import open_trace

    st = trace_stats(open_trace(args.file), phase=args.phase)
    print(json.dumps(st, allow_nan=False) if args.json else render_text(st))
    return 0


def cmd_trace_import(args) -> int:
    from artifact.traces.importers import import_file

    opts = {k: v for k, v in vars(args).items() if k in _IMPORT_OPTIONS and v is not None}
    tr, warnings, out = import_file(args.format, args.input, args.output, **opts)
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    phases = ", ".join(f"{v} {k}" for k, v in tr.phase_counts().items())
    native = "unknown" if tr.native_top_k is None else tr.native_top_k
    print(f"wrote {out}: model {tr.meta['model']}, {tr.num_sequences} sequences, {tr.num_tokens} tokens ({phases}), "
          f"{tr.layers} layers, {tr.num_experts} experts, top-{tr.top_k} (model's own top-{native})", file=sys.stderr)
    return 0


# keyword arguments of the importers that the `trace import` subcommands may set
_IMPORT_OPTIONS = ("model", "num_experts", "layers", "top_k", "start_len", "incomplete_prefill", "seq_field",
                   "token_field", "layer_field", "experts_field", "gates_field", "phase_field")


def _add_import_parsers(tsub) -> None:
    imp = tsub.add_parser("import", help="import routing dumps of other tools (route-csv, jsonl, vllm, sglang)",
                          description="Convert a routing dump into the project's trace format (.npz, schema 2), "
                          "with provenance in its meta. Bad input is refused with file, line, field and value; "
                          "nothing is written then.")
    _fmt(imp)
    fsub = imp.add_subparsers(dest="format", required=True, metavar="FORMAT")

    def fmt_parser(name: str, help_: str):
        f = fsub.add_parser(name, help=help_, description=help_)
        _fmt(f)
        f.add_argument("input", help="file to import")
        f.add_argument("-o", "--output", required=True, help="output trace (.npz), written atomically")
        return f

    def incomplete(f) -> None:
        f.add_argument("--incomplete-prefill", choices=("drop", "error"), default="drop",
                       help="a prefill token that has only its first layers: drop it (counted, warned) or refuse")

    def shape(f, layers: bool) -> None:
        f.add_argument("--model", default=None, help="model preset (gives experts, layers, top-k) or a model name")
        f.add_argument("--num-experts", type=int, default=None, help="experts per layer; unset: the preset's")
        if layers:
            f.add_argument("--layers", type=int, default=None, help="MoE layers; unset: the preset's")

    f = fmt_parser("route-csv", "BigMoeOnEdge's route_trace v1 CSV (header block and rows)")
    f.add_argument("--model", default=None, help="model preset; unset: from the header's arch, layers and experts")
    incomplete(f)
    f = fmt_parser("jsonl", "one JSON object per token and layer; field names as options")
    shape(f, layers=True)
    f.add_argument("--seq-field", default="sequence", help="field of the sequence id")
    f.add_argument("--token-field", default="token", help="field of the token position")
    f.add_argument("--layer-field", default="layer", help="field of the MoE layer")
    f.add_argument("--experts-field", default="experts", help="field of the top-k expert ids (a list)")
    f.add_argument("--gates-field", default="gates", help="field of the gate weights, if present")
    f.add_argument("--phase-field", default=None, help="field of the phase (0/prefill, 1/decode), if any")
    incomplete(f)
    f = fmt_parser("vllm", "vLLM responses with prompt_routed_experts / choices[].routed_experts "
                   "(--enable-return-routed-experts)")
    shape(f, layers=False)
    f = fmt_parser("sglang", "SGLang responses with choices[].sgl_ext.routed_experts or meta_info.routed_experts "
                   "(return_routed_experts)")
    shape(f, layers=True)
    f.add_argument("--top-k", type=int, default=None, help="experts per token in the payload; unset: the preset's")
    f.add_argument("--start-len", type=int, default=0, help="the request's routed_experts_start_len")
    imp.set_defaults(func=cmd_trace_import)


def cmd_trace_record(args) -> int:
    from artifact.traces.record import record_to_file

    out = record_to_file(args.model, args.prompts, args.max_new_tokens, args.output, device=args.device)
    print(f"wrote {out}", file=sys.stderr)
    return 0


def _local_tokenizer(model: str):
    """The tokenizer saved beside a checkpoint, or None (no tokenizer files: transformers would build an empty one)."""
    from artifact.engine.hf_models import model_source

    kind, where = model_source(model)
    names = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "spiece.model")
    if kind != "checkpoint" or not any((where / n).is_file() for n in names):
        return None
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(where), local_files_only=True)
    except (OSError, ValueError):
        return None


def _prompt_ids(args, config) -> list[list[int]]:
    """``--prompt TEXT`` (the checkpoint's tokenizer, or UTF-8 bytes for a 256-token vocabulary) or ``--prompt-ids
    FILE`` (one prompt per line: a JSON list or integers separated by commas or spaces); equal lengths (no padding)."""
    from pathlib import Path

    from artifact.engine.hf_models import byte_ids

    vocab = int(getattr(config, "vocab_size", 0) or 0)
    if args.prompt_ids is not None:
        p = Path(args.prompt_ids)
        if not p.is_file():
            raise ValueError(f"prompt ids file {p}: no such file")
        prompts = []
        for n, line in enumerate(p.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                ids = json.loads(line) if line.lstrip().startswith("[") else \
                    [int(t) for t in line.replace(",", " ").split()]
            except ValueError:
                raise ValueError(f"prompt ids file {p} line {n}: not a list of integers") from None
            prompts.append([int(t) for t in ids])
        if not prompts:
            raise ValueError(f"prompt ids file {p}: holds no prompt")
    else:
        tok = _local_tokenizer(args.model)
        if tok is not None:
            prompts = [list(tok(args.prompt)["input_ids"])]
        elif vocab >= 256:
            prompts = [byte_ids(args.prompt)]
            print("note: no tokenizer; the prompt is encoded as UTF-8 bytes", file=sys.stderr)
        else:
            raise ValueError(f"model {args.model}: a text prompt needs a tokenizer (none found, and the vocabulary of "
                             f"{vocab} is too small for bytes); give --prompt-ids")
    if len({len(q) for q in prompts}) != 1 or not prompts[0]:
        raise ValueError("prompts must be non-empty and of equal length (a batch without padding)")
    bad = [t for q in prompts for t in q if not 0 <= t < vocab]
    if bad:
        raise ValueError(f"prompt token id {bad[0]} is outside the model's vocabulary of {vocab}")
    return prompts * args.batch


def cmd_generate(args) -> int:
    import torch
    from tqdm import tqdm

    from artifact.engine.hf_models import build_model, byte_text, check_config, load_config
    from artifact.engine.offload import offload
    from artifact.planner import get_strategy
    from artifact.runtime.hardware import load_profile
    from artifact.runtime.live import refuse_if_not_live
    from artifact.traces.trace import save

    # Everything that can be refused is refused before a weight is loaded or moved.
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device cuda: torch.cuda.is_available() is False (no GPU, or a CPU build of torch "
                         f"{torch.__version__}); use --device cpu")
    if args.max_new_tokens < 1 or args.batch < 1:
        raise ValueError("--max-new-tokens and --batch must be at least 1")
    refuse_if_not_live(get_strategy(args.strategy))
    config = load_config(args.model)
    check_config(config, args.cache_experts)
    hw = load_profile(args.hardware)
    prompts = _prompt_ids(args, config)
    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    dtype = dtypes[args.dtype] if args.dtype != "auto" else (torch.bfloat16 if args.device == "cuda"
                                                            else torch.float32)
    model = build_model(args.model, args.seed, dtype, "cpu", config=config)
    model = offload(model, args.strategy, args.cache_experts, args.device, hw, record=True)
    session = model.expert_offload
    bar = tqdm(total=args.max_new_tokens, unit="tok", desc=f"{args.strategy} c={args.cache_experts}",
               disable=args.quiet)
    session.on_step = lambda step, phase, tokens, ms: bar.update(1)
    ids = torch.tensor(prompts, device=args.device)
    kwargs = {"max_new_tokens": args.max_new_tokens, "do_sample": False, "num_beams": 1,
              "attention_mask": torch.ones_like(ids), "pad_token_id": getattr(config, "pad_token_id", None) or 0}
    if args.ignore_eos:
        kwargs["min_new_tokens"] = args.max_new_tokens
    with torch.no_grad():
        out = model.generate(ids, **kwargs)
    bar.close()
    report = session.last
    new = out[0, -args.max_new_tokens:].tolist() if not config.is_encoder_decoder else out[0, 1:].tolist()
    tok = _local_tokenizer(args.model)
    text = tok.decode(new) if tok is not None else None
    print(text if text is not None else " ".join(str(t) for t in new) if config.vocab_size > 256 else byte_text(new))
    if args.record:
        save(report.trace, args.record)
    print(report.line() + (f"; trace -> {args.record}" if args.record else ""), file=sys.stderr)
    if args.json:
        print(json.dumps(report.summary(), allow_nan=False), file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m artifact", description="MoE expert offloading: traces, strategies, "
                                "a calibrated simulator and a real engine.")
    _fmt(p)
    p.add_argument("--version", action="version", version=__version__)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser("trace", help="generate, record, import and inspect routing traces")
    _fmt(t)
    tsub = t.add_subparsers(dest="trace_command", required=True, metavar="SUBCOMMAND")
    g = tsub.add_parser("generate", help="write a calibrated synthetic trace")
    _fmt(g)
    g.add_argument("--model", default="switch-base-128", help="model preset")
    g.add_argument("--sequences", type=int, default=64, help="number of sequences")
    g.add_argument("--tokens", type=int, default=128, help="mean tokens per sequence")
    g.add_argument("--seed", type=int, default=0, help="random seed")
    g.add_argument("-o", "--output", required=True, help="output .npz")
    g.set_defaults(func=cmd_trace_generate)
    i = tsub.add_parser("inspect", help="print a trace's routing statistics")
    _fmt(i)
    i.add_argument("file", help="trace file (.npz), or vendored:NAME")
    i.add_argument("--json", action="store_true", help="print one JSON object")
    i.add_argument("--phase", choices=("decode", "prefill", "all"), default="decode",
                   help="which tokens of a trace that marks phases to measure")
    i.set_defaults(func=cmd_trace_inspect)
    r = tsub.add_parser("record", help="record routing from a transformers MoE model during generation")
    _fmt(r)
    r.add_argument("--model", required=True, help="model name or path (transformers)")
    r.add_argument("--prompts", required=True, help="prompts file: text (one per line) or .jsonl of token ids")
    r.add_argument("--max-new-tokens", type=int, default=32, help="tokens to generate per prompt")
    r.add_argument("--device", default="cpu", help="torch device")
    r.add_argument("-o", "--output", required=True, help="output .npz")
    r.set_defaults(func=cmd_trace_record)
    _add_import_parsers(tsub)

    s = sub.add_parser("simulate", help="plan a workload with one strategy and time it with the simulator")
    _fmt(s)
    _add_workload_args(s)
    s.set_defaults(func=cmd_simulate)

    rn = sub.add_parser("run", help="plan a workload with one strategy and execute it on the offloading engine")
    _fmt(rn)
    _add_workload_args(rn)
    rn.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="where the engine runs")
    rn.add_argument("--repeats", type=int, default=3, help="timed repeats (after one warm-up)")
    rn.add_argument("--dtype", choices=("bfloat16", "float32"), default=None,
                    help="expert weight dtype (default: the model preset's)")
    rn.add_argument("--eager", action="store_true",
                    help="the eager issue loop instead of one CUDA graph replay per repeat (CUDA)")
    rn.set_defaults(func=cmd_run)

    cal = sub.add_parser("calibrate", help="measure copy, expert FFN and non-MoE times into a hardware profile")
    _fmt(cal)
    cal.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="device to measure")
    cal.add_argument("--models", nargs="*", default=None, help="model presets (default: all)")
    cal.add_argument("--name", default=None, help="profile name (default: the GPU family, e.g. h200)")
    cal.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16", help="weight dtype")
    cal.add_argument("--quick", action="store_true", help="few sizes and repeats (smoke test)")
    cal.add_argument("-o", "--output", required=True, help="profile JSON path, e.g. results/hardware/h200.json")
    cal.set_defaults(func=cmd_calibrate)

    gr = sub.add_parser("grid", help="run (or resume) one experiment grid into OUT/<grid>.csv")
    _fmt(gr)
    gr.add_argument("name", choices=tuple(GRID_NAMES), help="grid")
    gr.add_argument("--out", default="out/raw", help="folder of the CSV files")
    gr.add_argument("--hardware", default="h200", help="hardware profile for the simulator")
    gr.add_argument("--quick", action="store_true", help="a small version of the grid")
    gr.add_argument("--jobs", type=int, default=None, help="simulator processes (default: CPU count)")
    gr.add_argument("--device", choices=("cuda", "cpu"), default=None, help="engine device (default: cuda if any)")
    gr.add_argument("--eager", action="store_true",
                    help="engine points: the eager issue loop instead of one CUDA graph replay per repeat")
    gr.set_defaults(func=cmd_grid)

    rp = sub.add_parser("report", help="rebuild REPORT.md and the figures from RESULTS/raw/*.csv alone")
    _fmt(rp)
    rp.add_argument("--results", default="results", help="results folder (raw/, hardware/)")
    rp.set_defaults(func=cmd_report)

    rr = sub.add_parser("reproduce", help="the main job: calibrate (GPU), run every grid, build the report")
    _fmt(rr)
    rr.add_argument("--out", default="out/reproduce", help="output folder (raw/, hardware/, figures/, REPORT.md)")
    rr.add_argument("--quick", action="store_true", help="small grids (smoke test)")
    rr.add_argument("--device", choices=("cuda", "cpu"), default=None, help="default: cuda if available")
    rr.add_argument("--jobs", type=int, default=None, help="simulator processes (default: CPU count)")
    rr.add_argument("--hardware", default=None,
                    help="profile name (GPU: the name to calibrate into; CPU: committed profile, default h200)")
    rr.add_argument("--recalibrate", action="store_true", help="measure the GPU again even if a profile exists")
    rr.set_defaults(func=cmd_reproduce)

    ge = sub.add_parser("generate", help="offload a transformers MoE model's experts and generate with a live "
                        "strategy", description="Greedy generation with every routed expert in a host slab and "
                        "CACHE_EXPERTS device slots managed live by STRATEGY; prints the tokens and a one-line "
                        "summary (tokens/s, hits, loads, bytes moved, per-token latency).")
    _fmt(ge)
    ge.add_argument("--model", required=True, help="local checkpoint directory (safetensors; nothing is downloaded), "
                    "a config JSON (seeded random weights) or a built-in config: tiny-mixtral, tiny-olmoe, "
                    "tiny-qwen2-moe, tiny-qwen3-moe, tiny-gpt-oss, tiny-switch")
    pr = ge.add_mutually_exclusive_group(required=True)
    pr.add_argument("--prompt", help="prompt text")
    pr.add_argument("--prompt-ids", help="file of token ids: one prompt per line (equal lengths)")
    ge.add_argument("--strategy", default="intelligent_dedup", help="a strategy that can run live (see `list`)")
    ge.add_argument("--cache-experts", type=int, required=True, help="device expert slots")
    ge.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="where the model runs")
    ge.add_argument("--max-new-tokens", type=int, default=32, help="tokens to generate")
    ge.add_argument("--ignore-eos", action="store_true", help="generate exactly --max-new-tokens")
    ge.add_argument("--batch", type=int, default=1, help="repeat the prompt(s) this many times (a batch)")
    ge.add_argument("--dtype", choices=("auto", "float32", "bfloat16", "float16"), default="auto",
                    help="weights dtype (auto: bfloat16 on cuda, float32 on cpu)")
    ge.add_argument("--seed", type=int, default=0, help="seed of random weights (config or built-in models)")
    ge.add_argument("--hardware", default="h200", help="hardware profile the strategy plans with")
    ge.add_argument("--record", default=None, help="write the run's routing trace (.npz) here")
    ge.add_argument("--json", action="store_true", help="also print the summary as one JSON object (stderr)")
    ge.add_argument("--quiet", action="store_true", help="no progress bar")
    ge.set_defaults(func=cmd_generate)

    ls = sub.add_parser("list", help="list every strategy and the source it follows")
    _fmt(ls)
    ls.set_defaults(func=cmd_list)
    return p


def main(argv: list[str] | None = None) -> int:
    # The simulator's matrix products are tiny: BLAS threads only contend with the grid's worker processes (a
    # 100x slowdown was seen on 2 cores). Set before numpy is first imported; a user's own setting wins.
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    from artifact.core.errors import Unrunnable

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except Unrunnable as exc:
        print(f"error: this configuration cannot run: {exc}", file=sys.stderr)
        return 2
    except (ValueError, KeyError, FileNotFoundError) as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"error: {msg}", file=sys.stderr)
        return 2
