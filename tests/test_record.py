"""Recorder tests on tiny randomly initialised models (no downloads), one per supported family."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    MixtralConfig,
    MixtralForCausalLM,
    OlmoeConfig,
    OlmoeForCausalLM,
    Qwen2MoeConfig,
    Qwen2MoeForCausalLM,
    SwitchTransformersConfig,
    SwitchTransformersForConditionalGeneration,
)

from artifact.traces.record import (
    PromptsError,
    RouterHooks,
    preset_name,
    read_prompts,
    record,
    record_sequence,
    record_to_file,
)
from artifact.traces.trace import load

VOCAB = 64
PROMPTS = [[5, 6, 7, 8, 9], [10, 11, 12]]
NEW = 4
# Float drift between incremental decoding (KV cache) and one full-sequence forward is ~1e-7 in these fp32 models;
# a top-k choice may only differ from the reference where two probabilities are closer than this.
TIE = 1e-5


def _switch(expert_capacity: int = 64) -> SwitchTransformersForConditionalGeneration:
    torch.manual_seed(0)
    cfg = SwitchTransformersConfig(vocab_size=VOCAB, d_model=16, d_kv=8, d_ff=32, num_layers=4, num_decoder_layers=4,
                                   num_sparse_encoder_layers=2, num_sparse_decoder_layers=2, num_heads=2,
                                   num_experts=8, expert_capacity=expert_capacity, decoder_start_token_id=0,
                                   pad_token_id=0, eos_token_id=1)
    return SwitchTransformersForConditionalGeneration(cfg).eval()


def _mixtral() -> MixtralForCausalLM:
    torch.manual_seed(1)
    cfg = MixtralConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=32, num_hidden_layers=3,
                        num_attention_heads=2, num_key_value_heads=1, num_local_experts=4, num_experts_per_tok=2,
                        eos_token_id=2, pad_token_id=0)
    return MixtralForCausalLM(cfg).eval()


def _olmoe() -> OlmoeForCausalLM:
    torch.manual_seed(2)
    cfg = OlmoeConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=16, num_hidden_layers=3,
                      num_attention_heads=2, num_key_value_heads=1, num_experts=8, num_experts_per_tok=4,
                      norm_topk_prob=False, eos_token_id=2, pad_token_id=1)
    return OlmoeForCausalLM(cfg).eval()


def _qwen2_moe() -> Qwen2MoeForCausalLM:
    torch.manual_seed(3)
    # Layer 1 is dense (mlp_only_layers): the trace has 3 MoE layers, and layer 2's lookahead comes from layer 0.
    cfg = Qwen2MoeConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=32, moe_intermediate_size=16,
                         shared_expert_intermediate_size=32, num_hidden_layers=4, mlp_only_layers=[1],
                         num_attention_heads=2, num_key_value_heads=1, num_experts=8, num_experts_per_tok=2,
                         norm_topk_prob=True, eos_token_id=2, pad_token_id=0)
    return Qwen2MoeForCausalLM(cfg).eval()


# family -> (builder, MoE layers, top_k, experts, gates renormalised)
FAMILIES = {
    "switch": (_switch, 2, 1, 8, False),
    "mixtral": (_mixtral, 3, 2, 4, True),
    "olmoe": (_olmoe, 3, 4, 8, False),
    "qwen2_moe": (_qwen2_moe, 3, 2, 8, True),
}


def _ref_probs(model, seq, prompt) -> np.ndarray:
    """Router probabilities of one full-sequence forward over the recorded tokens: float32 [T, L, E]."""
    with torch.no_grad():
        if model.config.is_encoder_decoder:
            out = model(input_ids=torch.tensor([prompt]), decoder_input_ids=torch.from_numpy(seq.tokens)[None],
                        output_router_logits=True)
            logits = out.decoder_router_logits
        else:
            out = model(input_ids=torch.from_numpy(seq.tokens)[None], output_router_logits=True)
            logits = out.router_logits
    return torch.stack([torch.softmax(lg.reshape(len(seq.tokens), -1).float(), -1) for lg in logits], 1).numpy()


def _assert_topk(ids: np.ndarray, probs: np.ndarray, what: str) -> None:
    """``ids [T, L, K]`` is the top-k of ``probs [T, L, E]`` in descending order, up to float ties."""
    k = ids.shape[-1]
    ref = np.sort(probs, axis=-1)[..., ::-1][..., :k]  # [T, L, K]
    got = np.take_along_axis(probs, ids.astype(np.int64), axis=-1)  # [T, L, K]
    assert np.abs(got - ref).max() < TIE, f"{what}: recorded experts are not the reference top-{k}"
    exact = (ids == np.argsort(-probs, axis=-1, kind="stable")[..., :k]).all(-1).mean()
    assert exact > 0.9, f"{what}: only {exact:.0%} of (token, layer) top-k lists match exactly"


@pytest.mark.parametrize("family", FAMILIES)
def test_trace_shape_per_family(family):
    build, layers, k, experts, renorm = FAMILIES[family]
    tr = record(build(), PROMPTS, NEW, ignore_eos=True)
    tr.validate()
    assert (tr.layers, tr.top_k, tr.num_experts, tr.num_sequences) == (layers, k, experts, len(PROMPTS))
    if family == "switch":  # decoder start token + all generated tokens but the last, one per step
        assert tr.seq_lengths.tolist() == [NEW] * len(PROMPTS)
        assert tr.meta["prompt_tokens"] == [0, 0]
        assert tr.meta["encoder_prompt_tokens"] == [len(p) for p in PROMPTS]
    else:  # prefill then every generated token but the last
        assert tr.seq_lengths.tolist() == [len(p) + NEW - 1 for p in PROMPTS]
        assert tr.meta["prompt_tokens"] == [len(p) for p in PROMPTS]
    assert tr.meta["source"] == "recorded"
    assert tr.meta["generator"]["family"] == family
    assert (tr.lookahead[:, 0] == -1).all() and (tr.lookahead[:, 1:] >= 0).all()
    sums = tr.gates.astype(np.float32).sum(-1)  # [T, L]
    if renorm:
        np.testing.assert_allclose(sums, 1.0, atol=2e-3)
    else:
        assert (sums < 1.0 + 2e-3).all() and (sums < 0.999).any()


@pytest.mark.parametrize("family", FAMILIES)
def test_recorded_ids_match_full_forward(family):
    """Every recorded token's experts equal the top-k of the router logits of one separate full-sequence forward
    (with ``output_router_logits``) over exactly the recorded tokens; gates equal their probabilities."""
    build, _, _, _, renorm = FAMILIES[family]
    model = build()
    with RouterHooks(model) as hooks:
        seqs = [record_sequence(model, hooks, p, NEW, ignore_eos=True) for p in PROMPTS]
    for prompt, seq in zip(PROMPTS, seqs):
        probs = _ref_probs(model, seq, prompt)  # [T, L, E]
        _assert_topk(seq.experts, probs, family)
        gates = np.take_along_axis(probs, seq.experts.astype(np.int64), axis=-1)  # [T, L, K]
        if renorm:
            gates = gates / gates.sum(-1, keepdims=True)
        np.testing.assert_allclose(seq.gates.astype(np.float32), gates, atol=1e-3)
        if family != "switch":
            assert seq.tokens[: len(prompt)].tolist() == prompt


def _moe_block_inputs(model, seq, prompt) -> list[torch.Tensor]:
    """Independent of the recorder: a pre-hook on each MoE block (Switch ``SparseMLP``, ``...SparseMoeBlock``)
    captures its input, the normalised hidden state. Returns one ``[T, D]`` tensor per MoE layer."""
    blocks = [m for n, m in model.named_modules()
              if type(m).__name__ in ("SwitchTransformersSparseMLP", "MixtralSparseMoeBlock", "OlmoeSparseMoeBlock",
                                      "Qwen2MoeSparseMoeBlock") and not n.startswith("encoder")]
    seen: list[torch.Tensor] = []
    handles = [b.register_forward_pre_hook(lambda mod, args: seen.append(args[0].reshape(-1, args[0].shape[-1])))
               for b in blocks]
    try:
        _ref_probs(model, seq, prompt)
    finally:
        for h in handles:
            h.remove()
    return seen


def _router_weight(model, layer: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    routers = [m for n, m in model.named_modules()
               if n.endswith(("mlp.gate", "mlp.router")) and not n.startswith("encoder")]
    r = routers[layer]
    lin = r.classifier if hasattr(r, "classifier") else r
    return lin.weight.float(), getattr(lin, "bias", None)


@pytest.mark.parametrize("family", FAMILIES)
def test_lookahead_is_next_router_on_previous_moe_input(family):
    build, layers, _, _, _ = FAMILIES[family]
    model = build()
    with RouterHooks(model) as hooks:
        seq = record_sequence(model, hooks, PROMPTS[0], NEW, ignore_eos=True)
    inputs = _moe_block_inputs(model, seq, PROMPTS[0])
    assert len(inputs) == layers
    assert (seq.lookahead[:, 0] == -1).all()
    for lyr in range(1, layers):
        w, b = _router_weight(model, lyr)
        with torch.no_grad():
            probs = torch.softmax(F.linear(inputs[lyr - 1].float(), w, b), -1).numpy()  # [T, E]
        _assert_topk(seq.lookahead[:, lyr : lyr + 1], probs[:, None], f"{family} lookahead layer {lyr}")


def test_switch_capacity_drop_records_router_choice_not_zero():
    """HF Switch zeroes the dispatch row of a token over its expert's capacity, which reads as expert 0. In a
    prefill-like pass (12 decoder tokens, capacity 1) most tokens are dropped; the recorder keeps their choice."""
    model = _switch(expert_capacity=1)
    dispatch: list[torch.Tensor] = []  # HF's one-hot dispatch mask per decoder MoE layer, [1, S, E]
    routers = [m for n, m in model.named_modules() if n.startswith("decoder") and n.endswith("mlp.router")]
    handles = [r.register_forward_hook(lambda mod, a, out: dispatch.append(out[0])) for r in routers]
    dec = torch.tensor([[0, 3, 9, 17, 4, 4, 30, 12, 8, 50, 21, 7]])
    with RouterHooks(model) as hooks, torch.no_grad():
        out = model(input_ids=torch.tensor([PROMPTS[0]]), decoder_input_ids=dec, output_router_logits=True)
        experts, _, _ = hooks.take()
    for h in handles:
        h.remove()
    argmax = torch.stack([lg[0].argmax(-1) for lg in out.decoder_router_logits], 1).numpy()  # [S, L]
    hf_index = torch.stack([d[0].argmax(-1) for d in dispatch], 1).numpy()  # [S, L], 0 where dropped
    dropped = torch.stack([d[0].sum(-1) == 0 for d in dispatch], 1).numpy()  # [S, L]
    assert dropped.sum() >= 8
    assert (hf_index[dropped] == 0).all()
    np.testing.assert_array_equal(experts[:, :, 0], argmax)
    assert (experts[:, :, 0][dropped] != 0).any(), "recorder reported expert 0 for every dropped token"

    # End to end through generate: capacity 0 drops every token in HF, the trace still holds the router's choice.
    model = _switch(expert_capacity=0)
    with RouterHooks(model) as hooks:
        seq = record_sequence(model, hooks, PROMPTS[0], 6, ignore_eos=True)
    _assert_topk(seq.experts, _ref_probs(model, seq, PROMPTS[0]), "switch capacity 0")
    assert (seq.experts != 0).any()


def test_record_to_file_round_trip(tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('[5, 6, 7]\n\n{"input_ids": [8, 9]}\n')
    out = record_to_file(_mixtral(), prompts, 3, tmp_path / "t.npz")
    tr = load(out)
    assert tr.num_sequences == 2 and tr.meta["generator"]["prompts"] == "p.jsonl"
    assert tr.meta["generator"]["max_new_tokens"] == 3 and tr.meta["model"] == tr.meta["model_id"]


def test_text_prompts_need_a_tokenizer(tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("hello world\n")
    with pytest.raises(PromptsError, match=r"p\.txt.*tokenizer"):
        record_to_file(_mixtral(), prompts, 2, tmp_path / "t.npz")


def test_unsupported_family_names_the_class():
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1)
    with pytest.raises(ValueError, match="unsupported model family: LlamaForCausalLM"):
        record(LlamaForCausalLM(cfg), PROMPTS, 2)


def test_bad_token_id_and_max_new_tokens():
    model = _mixtral()
    with pytest.raises(ValueError, match="prompt 1 holds token id 64 but the model's vocabulary has 64"):
        record(model, [[1, 2], [3, 64]], 2)
    with pytest.raises(ValueError, match="max_new_tokens must be a positive integer, got 0"):
        record(model, PROMPTS, 0)


def test_preset_name_needs_name_and_shape():
    assert preset_name("mistralai/Mixtral-8x7B-v0.1", 32, 8, 2, 4096, 14336) == "mixtral-8x7b"
    assert preset_name("allenai/OLMoE-1B-7B-0924", 16, 64, 8, 2048, 1024) == "olmoe-1b-7b"
    # decoder-only Switch trace: 6 MoE layers, the preset counts 12
    assert preset_name("google/switch-base-128", 6, 128, 1, 768, 3072) is None
    assert preset_name("my/mixtral-8x7b-tiny", 3, 4, 2, 32, 32) is None


def test_read_prompts_formats(tmp_path):
    j = tmp_path / "p.jsonl"
    j.write_text('[1, 2, 3]\n{"input_ids": [4]}\n\n{"text": "hi there"}\n')
    assert read_prompts(j) == [[1, 2, 3], [4], "hi there"]
    t = tmp_path / "p.txt"
    t.write_text("first prompt\n\n  second  \n")
    assert read_prompts(t) == ["first prompt", "second"]


@pytest.mark.parametrize("content,match", [
    ("", r"e\.jsonl: holds no prompts"),
    ("\n  \n", r"e\.jsonl: holds no prompts"),
    ("[1, 2]\n{oops\n", r"e\.jsonl line 2: not valid JSON"),
    ("[1, 2]\n\n[1, -3]\n", r"e\.jsonl line 3: token id -3"),
    ('["a"]\n', r"e\.jsonl line 1: token id 'a'"),
    ("[true]\n", r"e\.jsonl line 1: token id True"),
    ("[]\n", r"e\.jsonl line 1: token ids must be a non-empty list"),
    ('{"input_ids": 5}\n', r"e\.jsonl line 1 field 'input_ids': token ids must be"),
    ('{"text": ""}\n', r"e\.jsonl line 1 field 'text': must be a non-empty string"),
    ('{"prompt": "x"}\n', r"e\.jsonl line 1: expected a token-id list"),
    ("7\n", r"e\.jsonl line 1: expected a token-id list"),
])
def test_read_prompts_errors(tmp_path, content, match):
    f = tmp_path / "e.jsonl"
    f.write_text(content)
    with pytest.raises(PromptsError, match=match):
        read_prompts(f)


def test_read_prompts_missing_and_empty_text(tmp_path):
    with pytest.raises(PromptsError, match=r"nope\.txt: no such file"):
        read_prompts(tmp_path / "nope.txt")
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(PromptsError, match=r"empty\.txt: holds no prompts"):
        read_prompts(tmp_path / "empty.txt")
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(PromptsError, match=r"bin\.txt: not UTF-8"):
        read_prompts(tmp_path / "bin.txt")


def test_prompts_json_is_checked_line_by_line(tmp_path):
    f = tmp_path / "p.ndjson"
    f.write_text("\n".join(json.dumps(x) for x in ([1], {"input_ids": [2, 3]}, {"text": "t", "input_ids": [9]})))
    assert read_prompts(f) == [[1], [2, 3], [9]]


def test_record_from_a_saved_path(tmp_path):
    model = _mixtral()
    model.save_pretrained(tmp_path / "tiny-mixtral")
    tr = record(str(tmp_path / "tiny-mixtral"), PROMPTS, 2, ignore_eos=True)
    assert tr.meta["model"] == str(tmp_path / "tiny-mixtral")
    ref = record(model, PROMPTS, 2, ignore_eos=True)
    np.testing.assert_array_equal(tr.experts, ref.experts)
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=1)).save_pretrained(tmp_path / "llama")
    with pytest.raises(ValueError, match="unsupported model family: LlamaForCausalLM"):
        record(str(tmp_path / "llama"), PROMPTS, 2)


def test_text_prompts_with_a_tokenizer():
    def tokenizer(text):  # stands in for a Hugging Face tokenizer: one id per character
        return {"input_ids": [3 + ord(c) % 50 for c in text]}

    tr = record(_olmoe(), ["ab", "hello"], 2, tokenizer=tokenizer, ignore_eos=True)
    assert tr.meta["prompt_tokens"] == [2, 5]
