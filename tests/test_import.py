"""Importers: route-csv, jsonl, vLLM and SGLang dumps into the trace format; one clear error per kind of bad input;
nothing half-written; the vendored real traces equal a fresh import of their CSVs."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest

from artifact.cli import build_parser, main
from artifact.traces import vendored
from artifact.traces.importers import import_file, import_trace
from artifact.traces.trace import DECODE, PREFILL, TraceError, load

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "traces"
DATA = Path(__file__).parent / "data"

# --- route-csv ------------------------------------------------------------------------------------------------------

HEADER = "turn,phase,step,layer,slot,expert,weight,residency,expert_bytes"


def _routing(tokens: int, L: int, E: int, K: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ex = np.stack([rng.permutation(E)[:K] for _ in range(tokens * L)]).reshape(tokens, L, K)
    w = rng.dirichlet(np.ones(K), size=(tokens, L))
    return ex, -np.sort(-w, axis=-1)


def route_csv(path: Path, prefill=3, decode=4, L=3, E=8, K=2, arch="toyarch", skip_prefill_last=True, seed=0,
              turns=1) -> tuple[Path, list[str], dict]:
    """A small route_trace v1 file: prefill rows layer by layer (all positions but the last without the last layer
    when ``skip_prefill_last``), decode rows token by token, as the real engine writes them."""
    lines = ["# route_trace v1", f"# model=/data/toy.gguf arch={arch} n_layer={L} n_expert={E} n_expert_used={K}"]
    lines += [f"# layer={lyr} expert_bytes={1000 + lyr} dense_bytes=77" for lyr in range(L)]
    lines.append(HEADER)
    expect = {}
    for turn in range(turns):
        T = prefill + decode
        ex, w = _routing(T, L, E, K, seed + turn)
        base = turn * 100
        for lyr in range(L):  # prefill: layer-major
            for p in range(prefill):
                if skip_prefill_last and lyr == L - 1 and p < prefill - 1:
                    continue
                for k in range(K):
                    lines.append(f"{turn},0,{base + p},{lyr},{k},{ex[p, lyr, k]},{w[p, lyr, k]:.6f},0,{1000 + lyr}")
        for p in range(prefill, T):  # decode: token-major
            for lyr in range(L):
                for k in range(K):
                    lines.append(f"{turn},1,{base + p},{lyr},{k},{ex[p, lyr, k]},{w[p, lyr, k]:.6f},1,0")
        expect[turn] = (ex, w)
    path.write_text("\n".join(lines) + "\n")
    return path, lines, expect


def _line_of(lines: list[str], prefix: str) -> int:
    """1-based line number of the first line starting with ``prefix``."""
    return next(i for i, t in enumerate(lines, start=1) if t.startswith(prefix))


def _rewrite(path: Path, lines: list[str], n: int, new: str | None) -> Path:
    out = list(lines)
    if new is None:
        del out[n - 1]
    else:
        out[n - 1] = new
    path.write_text("\n".join(out) + "\n")
    return path


def test_route_csv_round_trip(tmp_path):
    p, _, expect = route_csv(tmp_path / "t.route.csv", turns=2)
    tr, warnings = import_trace("route-csv", p)
    ex0, w0 = expect[0]
    # per turn: 2 of 3 prefill positions lack the last layer -> dropped; position 2 and the 4 decode tokens stay
    assert tr.num_sequences == 2 and tr.seq_lengths.tolist() == [5, 5]
    np.testing.assert_array_equal(tr.experts[:5], ex0[2:])
    np.testing.assert_array_equal(tr.gates[:5], np.round(w0[2:], 6).astype(np.float16))
    np.testing.assert_array_equal(tr.experts[5:], expect[1][0][2:])
    assert tr.phase.tolist() == [PREFILL] + [DECODE] * 4 + [PREFILL] + [DECODE] * 4
    m = tr.meta
    assert m["schema_version"] == 2 and m["model"] == "toyarch" and m["format"] == "route-csv"
    assert m["source_file"] == "t.route.csv" and len(m["source_sha256"]) == 64
    assert m["top_k_used"] == 2 and m["native_top_k"] is None and m["arch"] == "toyarch"
    rc = m["route_csv"]
    assert rc["dropped_prefill_tokens"] == 4 and rc["tokens_in_file"] == {"prefill": 6, "decode": 8}
    assert rc["expert_bytes"] == [1000, 1001, 1002] and rc["dense_bytes"] == [77, 77, 77]
    assert rc["residency_hits_rows"] == {"prefill": [0, 28], "decode": [48, 48]}
    assert any("dropped 4 of 6 prefill tokens" in w for w in warnings)
    assert any("no preset for arch 'toyarch'" in w for w in warnings)


def test_route_csv_complete_prefill_keeps_every_token(tmp_path):
    p, _, expect = route_csv(tmp_path / "t.csv", skip_prefill_last=False)
    tr, warnings = import_trace("route-csv", p)
    np.testing.assert_array_equal(tr.experts, expect[0][0])
    assert tr.phase_counts() == {"prefill": 3, "decode": 4} and tr.meta["route_csv"]["dropped_prefill_tokens"] == 0
    assert not any("dropped" in w for w in warnings)


def test_route_csv_incomplete_prefill_error_option(tmp_path):
    p, lines, _ = route_csv(tmp_path / "t.csv")
    with pytest.raises(TraceError, match=r"t\.csv: line \d+: field 'layer': turn 0 position 0 \(prefill\) has no "
                                         r"record for layer 2 \(2 of 3 layers; the header says n_layer=3\)"):
        import_trace("route-csv", p, incomplete_prefill="error")


def test_route_csv_maps_arch_to_preset(tmp_path):
    p, _, _ = route_csv(tmp_path / "g.csv", L=30, E=128, K=6, arch="gemma4", prefill=2, decode=2)
    tr, warnings = import_trace("route-csv", p)
    assert tr.meta["model"] == "gemma-4-26b-a4b" and tr.meta["native_top_k"] == 8 and tr.native_top_k == 8
    assert not any("no preset" in w for w in warnings)


def test_route_csv_model_override_must_fit_header(tmp_path):
    p, _, _ = route_csv(tmp_path / "t.csv")
    with pytest.raises(TraceError, match=r"field 'n_layer': the header says n_layer=3 n_expert=8 but model preset "
                                         r"qwen3-30b-a3b has 48 MoE layers x 128 experts"):
        import_trace("route-csv", p, model="qwen3-30b-a3b")


def test_route_csv_top_k_above_native_is_refused(tmp_path):
    p, _, _ = route_csv(tmp_path / "t.csv", L=36, E=128, K=5, arch="gpt-oss", prefill=1, decode=1)
    with pytest.raises(TraceError, match=r"field 'n_expert_used': 5 but model preset gpt-oss-120b routes top-4"):
        import_trace("route-csv", p)


def test_bad_missing_layer_for_a_decode_token(tmp_path):
    p, lines, _ = route_csv(tmp_path / "t.csv")
    n = _line_of(lines, "0,1,4,1,")  # decode position 4, layer 1: drop both slots
    lines = lines[: n - 1] + lines[n + 1:]
    _rewrite(p, lines, 1, lines[0])
    with pytest.raises(TraceError, match=r"t\.csv: line \d+: field 'layer': turn 0 position 4 \(decode\) has no "
                                         r"record for layer 1 \(2 of 3 layers; the header says n_layer=3\)"):
        import_trace("route-csv", p)


def test_bad_expert_out_of_range(tmp_path):
    p, lines, _ = route_csv(tmp_path / "t.csv")
    n = _line_of(lines, "0,1,5,2,1,")
    _rewrite(p, lines, n, "0,1,5,2,1,131,0.1,1,0")
    with pytest.raises(TraceError, match=rf"t\.csv: line {n}: field 'expert': expert id 131 but the header says "
                                         r"n_expert=8"):
        import_trace("route-csv", p)


def test_bad_duplicate_experts_in_one_topk(tmp_path):
    p, lines, expect = route_csv(tmp_path / "t.csv")
    n = _line_of(lines, "0,1,3,0,1,")
    first = int(expect[0][0][3, 0, 0])
    _rewrite(p, lines, n, f"0,1,3,0,1,{first},0.1,1,0")
    with pytest.raises(TraceError, match=rf"line {n}: field 'expert': expert {first} twice in the top-k of turn 0 "
                                         r"position 3 layer 0"):
        import_trace("route-csv", p)


def test_bad_non_monotone_positions(tmp_path):
    p, lines, _ = route_csv(tmp_path / "t.csv")
    a, b = _line_of(lines, "0,1,4,"), _line_of(lines, "0,1,5,")
    rows = lines[a - 1:b - 1]  # position 4 (all layers) moved after position 5
    nxt = lines[b - 1:b - 1 + len(rows)]
    out = lines[: a - 1] + nxt + rows + lines[b - 1 + len(rows):]
    _rewrite(p, out, 1, out[0])
    with pytest.raises(TraceError, match=r"field 'step': turn 0 layer 0: position 4 comes after position 5 "
                                         r"\(line \d+\); positions must increase"):
        import_trace("route-csv", p)


def test_bad_repeated_position(tmp_path):
    p, lines, _ = route_csv(tmp_path / "t.csv")
    a = _line_of(lines, "0,1,5,0,")
    out = lines + lines[a - 1:a + 1]  # position 5 layer 0 written again at the end
    _rewrite(p, out, 1, out[0])
    with pytest.raises(TraceError, match=r"field 'step': turn 0 position 5 layer 0 appears twice"):
        import_trace("route-csv", p)


def test_bad_missing_position(tmp_path):
    p, lines, _ = route_csv(tmp_path / "t.csv")
    out = [t for t in lines if not t.startswith("0,1,5,")]
    _rewrite(p, out, 1, out[0])
    with pytest.raises(TraceError, match=r"field 'step': turn 0: positions jump from 4 to 6 \(no records for "
                                         r"position 5\)"):
        import_trace("route-csv", p)


@pytest.mark.parametrize("case, words", [
    ("slots", r"field 'slot': slot 2 but the header says n_expert_used=2 \(slots 0\.\.1\)"),
    ("layer", r"field 'layer': layer 3 but the header says n_layer=3 \(layers 0\.\.2\)"),
    ("bytes", r"field 'expert_bytes': 5 but the header says layer 1 expert_bytes=1001 \(line 4\); a row loads 0 or "
              r"that"),
    ("short", r"field 'slot': turn 0 step 6 layer 2 has 1 slots but the header says n_expert_used=2"),
    ("nolayerline", r"header: field 'layer': no '# layer=1 expert_bytes=\.\.\.' line but n_layer=3"),
    ("extralayerline", r"line 6: field 'layer': header line for layer 3 but n_layer=3"),
])
def test_bad_header_contradicts_rows(tmp_path, case, words):
    p, lines, _ = route_csv(tmp_path / "t.csv")
    last = len(lines)
    if case == "slots":
        _rewrite(p, lines + [lines[-1].replace(",2,1,", ",2,2,", 1)], 1, lines[0])
    elif case == "layer":
        n = _line_of(lines, "0,1,6,2,0,")
        _rewrite(p, lines, n, lines[n - 1].replace("0,1,6,2,0,", "0,1,6,3,0,", 1))
    elif case == "bytes":
        n = _line_of(lines, "0,1,3,1,0,")
        _rewrite(p, lines, n, lines[n - 1].rsplit(",", 1)[0] + ",5")
    elif case == "short":
        _rewrite(p, lines, last, None)
    elif case == "nolayerline":
        _rewrite(p, lines, 4, None)
    else:
        _rewrite(p, lines[:5] + ["# layer=3 expert_bytes=1 dense_bytes=1"] + lines[5:], 1, lines[0])
    with pytest.raises(TraceError, match=words):
        import_trace("route-csv", p)


@pytest.mark.parametrize("n, new, words", [
    (1, "# not a trace", r"line 1: not a route_trace v1 file"),
    (2, "# model=x arch=a n_layer=3 n_expert=8", r"line 2: field 'n_expert_used': missing from the header"),
    (6, HEADER.replace(",weight", ""), r"line 6: field 'weight': column missing from the CSV header"),
    (7, "0,0,0,0,0,x,0.5,0,1000", r"line 7: field 'expert': 'x' is not an integer"),
    (7, "0,0,0,0,0,1,0.5,0", r"line 7: field 'residency': 8 values but the CSV header has 9 columns"),
    (7, "0,2,0,0,0,1,0.5,0,1000", r"line 7: field 'phase': 2 \(0 prefill, 1 decode\)"),
])
def test_bad_rows_and_header_lines(tmp_path, n, new, words):
    p, lines, _ = route_csv(tmp_path / "t.csv")
    with pytest.raises(TraceError, match=words):
        import_trace("route-csv", _rewrite(p, lines, n, new))


def test_prefill_after_decode_is_refused(tmp_path):
    p, lines, _ = route_csv(tmp_path / "t.csv", skip_prefill_last=False)
    out = [t.replace("0,0,0,", "0,1,0,", 1) if t.startswith("0,0,0,") else t for t in lines]  # position 0 decode
    _rewrite(p, out, 1, out[0])
    with pytest.raises(TraceError, match=r"field 'phase': turn 0 position 1 is prefill after decode position 0"):
        import_trace("route-csv", p)


def test_failed_import_leaves_nothing_behind(tmp_path, capsys):
    (tmp_path / "in").mkdir()
    p, lines, _ = route_csv(tmp_path / "in" / "t.csv")
    n = _line_of(lines, "0,1,5,2,1,")
    _rewrite(p, lines, n, "0,1,5,2,1,131,0.1,1,0")
    out = tmp_path / "out"
    out.mkdir()
    assert main(["trace", "import", "route-csv", str(p), "-o", str(out / "t.npz")]) == 2
    err = capsys.readouterr().err
    assert f"line {n}: field 'expert': expert id 131 but the header says n_expert=8" in err
    assert list(out.iterdir()) == []
    with pytest.raises(TraceError):
        import_file("route-csv", p, out / "t.npz")
    assert list(out.iterdir()) == []


# --- jsonl ----------------------------------------------------------------------------------------------------------


def _jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    return path


def _jsonl_records(T=4, L=16, E=64, K=4, seed=1, phase=True) -> tuple[list[dict], np.ndarray]:
    ex, w = _routing(T, L, E, K, seed)
    recs = []
    for t in range(T):
        for lyr in range(L):
            r = {"req": "a", "pos": 10 + t, "moe_layer": lyr, "ids": ex[t, lyr].tolist(),
                 "w": w[t, lyr].round(4).tolist()}
            if phase:
                r["stage"] = "prefill" if t < 2 else "decode"
            recs.append(r)
    return recs, ex


JSONL_FIELDS = {"seq_field": "req", "token_field": "pos", "layer_field": "moe_layer", "experts_field": "ids",
                "gates_field": "w", "phase_field": "stage"}


def test_jsonl_round_trip(tmp_path):
    recs, ex = _jsonl_records()
    tr, warnings = import_trace("jsonl", _jsonl(tmp_path / "d.jsonl", recs), model="olmoe-1b-7b", **JSONL_FIELDS)
    np.testing.assert_array_equal(tr.experts, ex)
    assert tr.gates is not None and tr.phase.tolist() == [0, 0, 1, 1]
    assert tr.meta["model"] == "olmoe-1b-7b" and tr.meta["top_k_used"] == 4 and tr.meta["native_top_k"] == 8
    assert tr.meta["jsonl"]["fields"]["experts"] == "ids" and warnings == []


def test_jsonl_layer_major_order_and_two_sequences(tmp_path):
    recs, ex = _jsonl_records(phase=False)
    other = [dict(r, req=7) for r in recs]
    layer_major = sorted(recs, key=lambda r: (r["moe_layer"], r["pos"])) + other
    fields = dict(JSONL_FIELDS, phase_field=None)
    tr, _ = import_trace("jsonl", _jsonl(tmp_path / "d.jsonl", layer_major), num_experts=64, **fields)
    assert tr.seq_lengths.tolist() == [4, 4] and tr.phase is None and tr.meta["model"] == "unknown"
    np.testing.assert_array_equal(tr.experts[:4], ex)


@pytest.mark.parametrize("mutate, words", [
    (lambda rs: rs.pop(5), r"line 1: field 'moe_layer': sequence \"a\" position 10 \(prefill\) has no record for "
                           r"layer 5"),
    (lambda rs: rs[3]["ids"].__setitem__(0, 64), r"line 4: field 'ids': expert id 64 but model preset olmoe-1b-7b "
                                                 r"has 64 experts"),
    (lambda rs: rs[3]["ids"].__setitem__(1, rs[3]["ids"][0]), r"line 4: field 'ids': expert \d+ twice in the top-k"),
    (lambda rs: rs[20].__setitem__("pos", 10), r"line 21: field 'pos': sequence \"a\" position 10 layer 4 appears "
                                               r"twice"),
    (lambda rs: rs.insert(0, rs.pop(16)), r"line 2: field 'pos': sequence \"a\" layer 0: position 10 comes after "
                                          r"position 11 \(line 1\); positions must increase"),
    (lambda rs: rs[2].pop("moe_layer"), r"line 3: field 'moe_layer': missing"),
    (lambda rs: rs[2].__setitem__("ids", [1, 2]), r"line 3: field 'ids': 2 experts but the first line has 4"),
    (lambda rs: rs[2].__setitem__("stage", "warmup"), r"line 3: field 'stage': \"warmup\" is no phase"),
    (lambda rs: rs[2].pop("w"), r"line 3: field 'w': present on some lines only"),
    (lambda rs: rs[40].__setitem__("moe_layer", 16), r"line 41: field 'moe_layer': layer 16 but model preset "
                                                     r"olmoe-1b-7b has 16 MoE layers"),
])
def test_jsonl_bad_input(tmp_path, mutate, words):
    recs, _ = _jsonl_records()
    mutate(recs)
    with pytest.raises(TraceError, match=r"d\.jsonl: " + words):
        import_trace("jsonl", _jsonl(tmp_path / "d.jsonl", recs), model="olmoe-1b-7b", **JSONL_FIELDS)


def test_jsonl_needs_expert_count(tmp_path):
    recs, _ = _jsonl_records()
    with pytest.raises(TraceError, match="the expert count is unknown"):
        import_trace("jsonl", _jsonl(tmp_path / "d.jsonl", recs), **JSONL_FIELDS)


def test_jsonl_not_json(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text('{"sequence": 0, "token": 0, "layer": 0, "experts": [1]}\n{nope\n')
    with pytest.raises(TraceError, match=r"d\.jsonl: line 2: not JSON"):
        import_trace("jsonl", p, num_experts=8)


# --- vLLM -----------------------------------------------------------------------------------------------------------


def _vllm_response(P=3, G=4, L=16, E=64, K=4, n=1, seed=2, cached=0) -> tuple[dict, np.ndarray, list[np.ndarray]]:
    prompt, _ = _routing(P, L, E, K, seed)
    prompt = prompt.copy()
    prompt[:cached] = -1
    gens = [_routing(G, L, E, K, seed + 1 + i)[0] for i in range(n)]
    return ({"id": "cmpl-1", "object": "text_completion", "prompt_routed_experts": prompt.tolist(),
             "choices": [{"index": i, "text": "x", "routed_experts": g.tolist()} for i, g in enumerate(gens)],
             "usage": {"prompt_tokens": P, "completion_tokens": G * n}}, prompt, gens)


def test_vllm_round_trip(tmp_path):
    resp, prompt, gens = _vllm_response(n=2)
    p = tmp_path / "r.json"
    p.write_text(json.dumps(resp))
    tr, warnings = import_trace("vllm", p, model="olmoe-1b-7b")
    assert tr.seq_lengths.tolist() == [7, 7] and tr.phase_counts() == {"prefill": 6, "decode": 8}
    np.testing.assert_array_equal(tr.experts[:7], np.concatenate([prompt, gens[0]]))
    np.testing.assert_array_equal(tr.experts[7:], np.concatenate([prompt, gens[1]]))
    assert tr.gates is None and tr.meta["format"] == "vllm" and tr.meta["top_k_used"] == 4 and warnings == []


def test_vllm_jsonl_and_cached_prompt_rows(tmp_path):
    a, _, _ = _vllm_response(seed=3, cached=2)
    b, _, gens = _vllm_response(seed=5)
    b["prompt_routed_experts"] = None
    p = tmp_path / "r.jsonl"
    p.write_text(json.dumps(a) + "\n" + json.dumps(b) + "\n")
    tr, warnings = import_trace("vllm", p, num_experts=64)
    assert tr.seq_lengths.tolist() == [5, 4] and tr.phase.tolist() == [0, 1, 1, 1, 1, 1, 1, 1, 1]
    np.testing.assert_array_equal(tr.experts[5:], gens[0])
    assert tr.meta["vllm"]["dropped_cached_prompt_tokens"] == 2
    assert any("dropped 2 prompt positions" in w for w in warnings)
    assert any("decode tokens only" in w for w in warnings)


@pytest.mark.parametrize("mutate, words", [
    (lambda r: r["choices"][0].__setitem__("routed_experts", None),
     r"choice 0: field 'routed_experts': missing or null \(was the server started with --enable-return-routed"),
    (lambda r: r["choices"][0]["routed_experts"][1][2].__setitem__(0, 64),
     r"choice 0: field 'routed_experts': \[1\]\[2\]\[0\] is expert id 64 but model preset olmoe-1b-7b has 64"),
    (lambda r: r["prompt_routed_experts"][0][0].__setitem__(1, r["prompt_routed_experts"][0][0][0]),
     r"field 'prompt_routed_experts': \[0\]\[0\] lists an expert twice in its top-k"),
    (lambda r: r["choices"][0]["routed_experts"][0].pop(),
     r"choice 0: field 'routed_experts': is not a rectangular \[tokens\]\[layers\]\[top_k\] list of integers"),
    (lambda r: r.pop("choices"), r"field 'choices': missing or empty"),
])
def test_vllm_bad_input(tmp_path, mutate, words):
    resp, _, _ = _vllm_response()
    mutate(resp)
    p = tmp_path / "r.json"
    p.write_text(json.dumps(resp))
    with pytest.raises(TraceError, match=r"r\.json: " + words):
        import_trace("vllm", p, model="olmoe-1b-7b")


def test_vllm_layers_must_fit_the_preset(tmp_path):
    resp, _, _ = _vllm_response(L=12)
    p = tmp_path / "r.json"
    p.write_text(json.dumps(resp))
    with pytest.raises(TraceError, match="12 layers but model preset olmoe-1b-7b has 16 MoE layers"):
        import_trace("vllm", p, model="olmoe-1b-7b")


# --- SGLang ---------------------------------------------------------------------------------------------------------


def _b64(a: np.ndarray) -> str:
    return base64.b64encode(a.astype("<i4").tobytes()).decode()


def test_sglang_openai_and_generate_responses(tmp_path):
    rows, _ = _routing(6, 16, 64, 8, 4)  # prompt 3 + completion 4 - 1 = 6 rows
    openai = {"choices": [{"index": 0, "text": "x", "sgl_ext": {"routed_experts": _b64(rows)}}],
              "usage": {"prompt_tokens": 3, "completion_tokens": 4}}
    native = {"text": "x", "meta_info": {"prompt_tokens": 2, "completion_tokens": 5, "routed_experts": _b64(rows)}}
    p = tmp_path / "s.json"
    p.write_text(json.dumps([openai, native]))
    tr, warnings = import_trace("sglang", p, model="olmoe-1b-7b")
    assert tr.seq_lengths.tolist() == [6, 6] and tr.top_k == 8
    assert tr.phase.tolist() == [0, 0, 0, 1, 1, 1] + [0, 0, 1, 1, 1, 1]
    np.testing.assert_array_equal(tr.experts[:6], rows)
    assert tr.meta["format"] == "sglang" and warnings == []


def test_sglang_start_len(tmp_path):
    rows, _ = _routing(4, 16, 64, 8, 4)  # positions 2..5 of a 3 + 4 sequence
    p = tmp_path / "s.json"
    p.write_text(json.dumps({"meta_info": {"prompt_tokens": 3, "completion_tokens": 4,
                                           "routed_experts": _b64(rows)}}))
    tr, _ = import_trace("sglang", p, model="olmoe-1b-7b", start_len=2)
    assert tr.phase.tolist() == [0, 1, 1, 1]


@pytest.mark.parametrize("payload, usage, words", [
    ("not base64!", {"prompt_tokens": 3, "completion_tokens": 4}, r"field 'routed_experts': not base64"),
    (None, {"prompt_tokens": 3, "completion_tokens": 4}, r"field 'routed_experts': missing or not a base64 string"),
    ("rows7", {"prompt_tokens": 3, "completion_tokens": 4},
     r"field 'routed_experts': 7 rows but the response says prompt_tokens 3 \+ completion_tokens 4 - 1 - start 0 = 6"),
    ("odd", {"prompt_tokens": 3, "completion_tokens": 4},
     r"field 'routed_experts': 120 ids is not a multiple of layers x top_k = 16 x 8"),
    ("bad_id", {"prompt_tokens": 3, "completion_tokens": 4},
     r"field 'routed_experts': \[0\]\[0\]\[0\] is expert id -1 but model preset olmoe-1b-7b has 64 experts"),
    ("rows6", {"completion_tokens": 4}, r"field 'usage.prompt_tokens': missing: needed to tell prefill"),
])
def test_sglang_bad_input(tmp_path, payload, usage, words):
    rows, _ = _routing(7, 16, 64, 8, 4)
    if payload == "rows7":
        payload = _b64(rows)
    elif payload == "rows6":
        payload = _b64(rows[:6])
    elif payload == "odd":
        payload = _b64(rows.ravel()[:120])
    elif payload == "bad_id":
        r = rows[:6].copy()
        r[0, 0, 0] = -1
        payload = _b64(r)
    p = tmp_path / "s.json"
    p.write_text(json.dumps({"choices": [{"sgl_ext": {"routed_experts": payload}}], "usage": usage}))
    with pytest.raises(TraceError, match=r"s\.json: choice 0: " + words):
        import_trace("sglang", p, model="olmoe-1b-7b")


# --- command line ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["route-csv", "jsonl", "vllm", "sglang"])
def test_import_help(fmt, capsys):
    with pytest.raises(SystemExit) as ei:
        build_parser().parse_args(["trace", "import", fmt, "--help"])
    assert ei.value.code == 0 and "--output" in capsys.readouterr().out


def _profile_with_alias(tmp_path: Path, alias: str, source: str = "olmoe-1b-7b") -> Path:
    """The tests' H200 profile with ``source``'s FFN timings under ``alias``: plumbing only, not a measurement."""
    d = json.loads((DATA / "h200-test.json").read_text())
    d["ffn_tables"][alias] = d["ffn_tables"][source]
    p = tmp_path / "hw.json"
    p.write_text(json.dumps(d))
    return p


def test_cli_import_then_simulate_takes_the_traces_model(tmp_path, capsys):
    recs, _ = _jsonl_records(T=6)
    src = _jsonl(tmp_path / "d.jsonl", recs)
    out = tmp_path / "t.npz"
    argv = ["trace", "import", "jsonl", str(src), "-o", str(out), "--model", "olmoe-1b-7b"]
    argv += [f"--{k.replace('_', '-')}={v}" for k, v in JSONL_FIELDS.items()]
    assert main(argv) == 0
    assert "top-4 (model's own top-8)" in capsys.readouterr().err
    assert main(["trace", "inspect", str(out), "--json"]) == 0
    st = json.loads(capsys.readouterr().out)
    assert st["top_k_used"] == 4 and st["native_top_k"] == 8 and st["phases"] == {"prefill": 2, "decode": 4}
    hw = str(DATA / "h200-test.json")
    assert main(["simulate", "--trace", str(out), "--batch", "1", "--cache-experts", "64", "--strategy",
                 "on_demand", "--hardware", hw, "--json"]) == 0  # no --model: the trace's own
    row = json.loads(capsys.readouterr().out)
    assert row["model"] == "olmoe-1b-7b" and row["top_k"] == 4 and row["native_top_k"] == 8
    assert row["steps"] == 4 and row["requests"] == 4 * 16 * 4  # the decode tokens only


def test_cli_model_must_fit_the_trace(tmp_path, capsys):
    recs, _ = _jsonl_records(T=3)
    out = tmp_path / "t.npz"
    argv = ["trace", "import", "jsonl", str(_jsonl(tmp_path / "d.jsonl", recs)), "-o", str(out), "--model",
            "olmoe-1b-7b"] + [f"--{k.replace('_', '-')}={v}" for k, v in JSONL_FIELDS.items()]
    assert main(argv) == 0
    assert main(["simulate", "--trace", str(out), "--model", "switch-base-128", "--steps", "2"]) == 2
    assert "has 64 experts, model switch-base-128 has 128" in capsys.readouterr().err


# --- the vendored real traces ---------------------------------------------------------------------------------------


def test_vendored_traces_load():
    assert vendored.names() == ["qwen3-30b-a3b", "gemma-4-26b-a4b", "gpt-oss-120b"]
    shapes = {"qwen3-30b-a3b": (129, 48, 6, 8, 1), "gemma-4-26b-a4b": (157, 30, 6, 8, 29),
              "gpt-oss-120b": (65, 36, 2, 4, 1)}
    for name, (T, L, K, native, prefill) in shapes.items():
        tr = vendored.load(name)
        assert tr.experts.shape == (T, L, K) and tr.native_top_k == native and tr.meta["model"] == name
        assert tr.phase_counts() == {"prefill": prefill, "decode": T - prefill}
        assert tr.gates is not None and tr.meta["route_csv"]["n_expert_used"] == K
        assert vendored.path(name).stat().st_size < 150_000
    assert (vendored.DATA / "bigmoeonedge-2026-07-15" / "LICENSE").read_text().startswith("\n" + " " * 33 + "Apache")
    with pytest.raises(KeyError, match="vendored: qwen3-30b-a3b"):
        vendored.load("nope")


@pytest.mark.skipif(not (SHARED / "bigmoeonedge-2026-07-15").is_dir(), reason="../shared/traces/ not present")
def test_vendored_traces_equal_a_fresh_import():
    for name, (fresh, _) in vendored.convert(SHARED).items():
        shipped = vendored.load(name)
        for f in ("experts", "seq_offsets", "gates", "phase"):
            np.testing.assert_array_equal(getattr(fresh, f), getattr(shipped, f), err_msg=f"{name}: {f}")
        drop = ("package_version",)
        assert {k: v for k, v in fresh.meta.items() if k not in drop} == \
               {k: v for k, v in shipped.meta.items() if k not in drop}, name


@pytest.mark.skipif(not (SHARED / "bigmoeonedge-2026-07-15").is_dir(), reason="../shared/traces/ not present")
def test_done_when_import_then_simulate_qwen(tmp_path, capsys):
    """The issue's command pair; the profile lends switch's FFN timings to qwen3 (no H200 timings for it yet)."""
    out = tmp_path / "q.npz"
    src = SHARED / "bigmoeonedge-2026-07-15" / "qwen.route.csv"
    assert main(["trace", "import", "route-csv", str(src), "-o", str(out)]) == 0
    assert "dropped 27 of 28 prefill tokens" in capsys.readouterr().err
    assert load(out).meta["model"] == "qwen3-30b-a3b"
    hw = _profile_with_alias(tmp_path, "qwen3-30b-a3b", "switch-base-128")
    assert main(["simulate", "--trace", str(out), "--batch", "1", "--cache-experts", "768", "--strategy",
                 "on_demand", "--json", "--hardware", str(hw)]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["model"] == "qwen3-30b-a3b" and row["steps"] == 128 and row["requests"] == 128 * 48 * 6
    assert row["bytes_h2d"] == row["loads"] * 9_437_184  # bf16 experts of the preset, not the GGUF's bytes
