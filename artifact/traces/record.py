"""Record routing traces from a real ``transformers`` MoE model during greedy ``generate``.

Families (module layout as in transformers 5.24):

- Switch Transformers (encoder-decoder): routers ``decoder.block.{i}.layer.2.mlp.router``
  (``SwitchTransformersTop1Router``; raw logits are its output 2), top-1, gate = the softmax probability of the
  chosen expert (what HF scales the expert output by; no renormalisation).
- Mixtral, OLMoE, Qwen2-MoE, Qwen3-MoE (decoder-only): routers ``model.layers.{i}.mlp.gate`` (``...TopKRouter``, a
  bare ``weight [E, d_model]``; raw logits are its output 0), top-k = ``router.top_k``. Mixtral always renormalises
  the top-k gates; OLMoE and the Qwen MoE models do so when ``router.norm_topk_prob`` is set. Qwen2-MoE's shared
  expert is not routed and is ignored; dense layers (``mlp_only_layers``, ``decoder_sparse_step``) have no router
  and are skipped, so trace layer ``l`` is the ``l``-th *MoE* layer.
- gpt-oss (decoder-only): routers ``model.layers.{i}.mlp.router`` (``GptOssTopKRouter``: ``weight [E, d_model]``
  and a ``bias [E]``); it takes the top-k of the logits and a softmax over those k, which is the top-k of the softmax
  over all experts renormalised to sum 1: what is recorded.

What is recorded, per sequence (one prompt = one sequence, generated alone at batch size 1, so no padding):

- Rows are the tokens the model *processes*, in order: the output sequence minus its last token, which
  ``generate`` returns but never feeds back. Decoder-only: prompt (prefill) then generated tokens;
  ``meta["prompt_tokens"][i]`` says how many leading rows of sequence ``i`` are prompt. Switch: only the decoder
  runs per decoding step, so only the decoder MoE layers are recorded; rows are the decoder start token and the
  generated tokens, one per step, and ``prompt_tokens`` is 0 (the prompt goes to the encoder, whose routing is
  not recorded; its lengths are in ``meta["encoder_prompt_tokens"]``).
- ``experts``/``gates``: top-k of ``softmax(router logits)`` computed here in float32 from the logits the router
  returned, never HF's reported index: HF Switch zeroes the dispatch row of a capacity-dropped token, which reads
  as expert 0 (FACTS.md section 2). A dropped token is recorded with the expert its router chose.
- ``lookahead`` for MoE layer ``l >= 1``: the top-k of MoE layer ``l``'s router applied to the exact tensor MoE
  layer ``l - 1``'s router received, i.e. the training-free "next router on this layer's hidden state" stand-in
  (mixtral-offloading, DAOP). That tensor is the normalised input of layer ``l - 1``'s MoE block: Mixtral, OLMoE,
  Qwen2-MoE: the ``post_attention_layernorm`` output of decoder layer ``l - 1``; Switch: the ``layer_norm`` output
  of the feed-forward sublayer of decoder block ``l - 1`` (after self- and cross-attention). It is normalised with
  layer ``l - 1``'s norm weights, not layer ``l``'s: that is what is available one layer early. Layer 0 holds -1.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Self

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from artifact.models import PRESETS
from artifact.traces.trace import Trace, make_meta, save

JSONL_SUFFIXES = (".jsonl", ".ndjson")


class PromptsError(ValueError):
    """A prompts file that cannot be read; the message names the file and, where it applies, the line."""


@dataclass(frozen=True)
class Family:
    """How one model family exposes its routers (transformers 5.24 layout)."""

    name: str  # stored in meta.generator.family
    router_class: str  # class name of the router module
    logits_index: int  # position of the raw router logits in the router's forward output
    encoder_decoder: bool  # True: record only the decoder's routers (what runs per decoding step)
    d_ff_attr: str  # config field of one routed expert's hidden width (for preset matching)
    renormalise: bool | None  # top-k gates renormalised to sum 1; None: read router.norm_topk_prob


FAMILIES: dict[str, Family] = {
    "switch_transformers": Family("switch", "SwitchTransformersTop1Router", 2, True, "d_ff", False),
    "mixtral": Family("mixtral", "MixtralTopKRouter", 0, False, "intermediate_size", True),
    "olmoe": Family("olmoe", "OlmoeTopKRouter", 0, False, "intermediate_size", None),
    "qwen2_moe": Family("qwen2_moe", "Qwen2MoeTopKRouter", 0, False, "moe_intermediate_size", None),
    "qwen3_moe": Family("qwen3_moe", "Qwen3MoeTopKRouter", 0, False, "moe_intermediate_size", None),
    "gpt_oss": Family("gpt_oss", "GptOssTopKRouter", 0, False, "intermediate_size", True),
}


def family_of(model: torch.nn.Module) -> Family:
    """The family of a built model; unsupported ones raise naming the class."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in FAMILIES:
        raise ValueError(f"unsupported model family: {type(model).__name__} (model_type {model_type!r}); "
                         f"the recorder supports model types {', '.join(FAMILIES)}")
    return FAMILIES[model_type]


@dataclass(frozen=True)
class RouterSite:
    """One MoE layer's router: where it sits and how to apply its weights to any hidden state."""

    path: str  # module path, e.g. "model.layers.3.mlp.gate"
    module: torch.nn.Module
    top_k: int
    renormalise: bool
    encoder: bool = False  # a router of an encoder-decoder model's encoder (runs once per prompt, not per step)

    @property
    def block_path(self) -> str:
        """Path of the MoE block that holds this router and its experts (``....mlp``)."""
        return self.path.rsplit(".", 1)[0]

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Raw logits of this router on ``x [N, D]``, computed the way its own forward does (without calling it,
        so no hook fires). Switch casts to the router dtype (float32); the TopK routers use the weight's dtype (and
        gpt-oss's bias)."""
        r = self.module
        if hasattr(r, "classifier"):
            w, b = r.classifier.weight, r.classifier.bias
            return F.linear(x.to(r.dtype), w.to(r.dtype), None if b is None else b.to(r.dtype))
        b = getattr(r, "bias", None)
        return F.linear(x, r.weight, b if isinstance(b, torch.Tensor) else None)

    def choose(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(gates, expert ids)`` ``[N, K]`` this router would pick on ``x [N, D]`` (see :func:`top_k_choice`):
        the lookahead when ``x`` is the previous MoE layer's router input."""
        return top_k_choice(self.logits(x), self.top_k, self.renormalise)


def router_sites(model: torch.nn.Module, encoder: bool = False) -> tuple[Family, list[RouterSite]]:
    """The recorded routers of ``model``, in layer order (an encoder-decoder model's decoder routers: what runs per
    decoding step); ``encoder=True`` appends the encoder's routers after them (``RouterSite.encoder``)."""
    fam = family_of(model)
    sites, enc = [], []
    for path, mod in model.named_modules():
        if type(mod).__name__ != fam.router_class:
            continue
        is_encoder = fam.encoder_decoder and "decoder" not in path.split(".")
        if is_encoder and not encoder:
            continue
        top_k = int(getattr(mod, "top_k", 1))  # Switch's router is top-1 and has no top_k attribute
        renorm = fam.renormalise if fam.renormalise is not None else bool(mod.norm_topk_prob)
        (enc if is_encoder else sites).append(RouterSite(path, mod, top_k, renorm, is_encoder))
    if not sites:
        raise ValueError(f"model {type(model).__name__}: no {fam.router_class} modules"
                         f"{' in the decoder' if fam.encoder_decoder else ''}; the recorder follows the module "
                         f"layout of transformers 5.24")
    experts = {int(s.module.num_experts) for s in sites}
    ks = {s.top_k for s in sites}
    if len(experts) != 1 or len(ks) != 1:
        raise ValueError(f"model {type(model).__name__}: MoE layers differ in experts {sorted(experts)} or top-k "
                         f"{sorted(ks)}; one trace needs the same [layers, top_k] for every layer")
    return fam, sites + enc


def top_k_choice(logits: torch.Tensor, k: int, renormalise: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``(gates, ids)`` ``[N, k]``: the top-k of ``softmax(logits)`` in float32, in router order, gates
    renormalised to sum 1 when ``renormalise``. What the recorder records and where the lookahead comes from."""
    probs = torch.softmax(logits.float(), dim=-1)  # [N, E], float32 whatever the model dtype
    vals, ids = torch.topk(probs, k, dim=-1)  # [N, K], descending: router order
    if renormalise:
        vals = vals / vals.sum(dim=-1, keepdim=True)
    return vals, ids


class RouterHooks:
    """Forward hooks on every recorded router; each router call appends that layer's rows.

    Use as a context manager around any forward passes (``generate`` or a plain forward); :meth:`take` returns the
    rows recorded since the last ``take``. With batch size 1 a row is a token; with a batch, rows are the router's
    flattened ``[batch * seq]`` tokens.
    """

    def __init__(self, model: torch.nn.Module):
        self.family, self.sites = router_sites(model)
        self.num_experts = int(self.sites[0].module.num_experts)
        self.top_k = self.sites[0].top_k
        self._handles: list = []
        self._clear()

    def _clear(self) -> None:
        n = len(self.sites)
        self._ids: list[list[torch.Tensor]] = [[] for _ in range(n)]
        self._gates: list[list[torch.Tensor]] = [[] for _ in range(n)]
        self._ahead: list[list[torch.Tensor]] = [[] for _ in range(n)]

    def _hook(self, layer: int) -> Callable:
        site = self.sites[layer]
        nxt = self.sites[layer + 1] if layer + 1 < len(self.sites) else None

        def hook(module, args, kwargs, output):
            x = args[0] if args else kwargs["hidden_states"]
            x = x.reshape(-1, x.shape[-1])  # [N, D]: Switch passes [B, S, D], TopK routers [B * S, D]
            logits = output[self.family.logits_index].reshape(x.shape[0], -1)  # [N, E]
            vals, ids = top_k_choice(logits, site.top_k, site.renormalise)
            self._ids[layer].append(ids.cpu())
            self._gates[layer].append(vals.cpu())
            if nxt is not None:
                _, ahead = nxt.choose(x)
                self._ahead[layer + 1].append(ahead.cpu())

        return hook

    def __enter__(self) -> Self:
        self._clear()
        self._handles = [s.module.register_forward_hook(self._hook(i), with_kwargs=True)
                         for i, s in enumerate(self.sites)]
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def take(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(experts int16, gates float16, lookahead int16)``, each ``[N, L, K]``; clears what was taken."""
        counts = [sum(t.shape[0] for t in rows) for rows in self._ids]
        if len(set(counts)) != 1:
            detail = ", ".join(f"{s.path}: {c}" for s, c in zip(self.sites, counts))
            raise RuntimeError(f"routers saw different numbers of tokens ({detail}); every forward pass must run "
                               f"all MoE layers")
        n, k = counts[0], self.top_k
        experts = torch.stack([torch.cat(r) if r else torch.zeros(0, k, dtype=torch.long) for r in self._ids], 1)
        gates = torch.stack([torch.cat(r) if r else torch.zeros(0, k) for r in self._gates], 1)
        ahead = torch.full((n, len(self.sites), k), -1, dtype=torch.long)  # [N, L, K], layer 0 stays -1
        for lyr in range(1, len(self.sites)):
            if n:
                ahead[:, lyr] = torch.cat(self._ahead[lyr])
        self._clear()
        return (experts.numpy().astype(np.int16), gates.numpy().astype(np.float16),
                ahead.numpy().astype(np.int16))


@dataclass(frozen=True)
class RecordedSequence:
    """One prompt's recording: ``tokens[t]`` is the token id whose routing is row ``t``."""

    tokens: np.ndarray  # int64 [T]: processed tokens (decoder tokens for Switch)
    prompt_tokens: int  # leading rows that are prompt (prefill); 0 for Switch
    experts: np.ndarray  # int16 [T, L, K]
    gates: np.ndarray  # float16 [T, L, K]
    lookahead: np.ndarray  # int16 [T, L, K]


def record_sequence(model: torch.nn.Module, hooks: RouterHooks, prompt: Sequence[int], max_new_tokens: int,
                    ignore_eos: bool = False) -> RecordedSequence:
    """Greedy-generate from one prompt inside ``hooks`` (already entered) and return its rows."""
    device = next(model.parameters()).device
    ids = torch.tensor([list(prompt)], dtype=torch.long, device=device)  # [1, P]
    gen = model.generation_config
    kwargs = {"max_new_tokens": max_new_tokens, "do_sample": False, "num_beams": 1, "use_cache": True,
              "attention_mask": torch.ones_like(ids)}
    if gen.pad_token_id is None:  # batch size 1 never pads; this only silences generate's warning
        eos = gen.eos_token_id
        kwargs["pad_token_id"] = (eos[0] if isinstance(eos, list) else eos) if eos is not None else 0
    if ignore_eos:
        kwargs["min_new_tokens"] = max_new_tokens
    hooks.take()  # drop anything recorded outside this call
    with torch.no_grad():
        out = model.generate(ids, **kwargs)  # [1, P + N] decoder-only; [1, 1 + N] Switch (start token first)
    experts, gates, ahead = hooks.take()
    tokens = out[0, :-1].cpu().numpy().astype(np.int64)  # generate never feeds its last token back
    if experts.shape[0] != tokens.shape[0]:
        raise RuntimeError(f"routers recorded {experts.shape[0]} tokens but generate processed {tokens.shape[0]} "
                           f"(prompt {len(prompt)}, output {out.shape[1]}); the recorder expects one prefill and "
                           f"one token per step")
    n_prompt = 0 if hooks.family.encoder_decoder else len(prompt)
    return RecordedSequence(tokens, n_prompt, experts, gates, ahead)


def _load_model(path: str, device: str) -> torch.nn.Module:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM

    config = AutoConfig.from_pretrained(path)
    if config.model_type not in FAMILIES:
        arch = ", ".join(getattr(config, "architectures", None) or [type(config).__name__])
        raise ValueError(f"model {path}: unsupported model family: {arch} (model_type {config.model_type!r}); "
                         f"the recorder supports model types {', '.join(FAMILIES)}")
    cls = AutoModelForSeq2SeqLM if config.is_encoder_decoder else AutoModelForCausalLM
    return cls.from_pretrained(path).to(device)


def _tokenize(prompts: Sequence, tokenizer, model_id: str, prompts_file: str | None) -> list[list[int]]:
    if all(not isinstance(p, str) for p in prompts):
        return [list(p) for p in prompts]
    where = f"prompts file {prompts_file}" if prompts_file else "prompts"
    if tokenizer is None:
        if not model_id:
            raise PromptsError(f"{where}: holds text but no tokenizer was given and the model has no path to load "
                               f"one from; pass tokenizer= or token-id prompts")
        from transformers import AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(model_id)
        except Exception as exc:  # noqa: BLE001 - any loading failure means the same thing to the user
            raise PromptsError(f"{where}: holds text but no tokenizer could be loaded from {model_id!r} "
                               f"({type(exc).__name__}: {exc}); pass a tokenizer or token-id prompts") from None
    return [list(tokenizer(p)["input_ids"]) if isinstance(p, str) else list(p) for p in prompts]


def preset_name(model_id: str, layers: int, experts: int, top_k: int, d_model: int, d_ff: int) -> str | None:
    """The preset a recorded model is, or None.

    The repository name must be the preset name (case-insensitive; a ``-suffix`` such as ``-v0.1`` or ``-0924``
    is allowed) *and* the recorded shape must equal the preset's exactly, so a trace never claims a preset whose
    layer count it breaks. Switch traces hold only the 6 decoder MoE layers, so they never match
    ``switch-base-128`` (12 layers: the preset counts encoder and decoder).
    """
    base = model_id.rstrip("/").split("/")[-1].lower()
    for name, spec in PRESETS.items():
        if base != name and not base.startswith(name + "-"):
            continue
        if (spec.moe_layers, spec.experts, spec.top_k, spec.d_model, spec.d_ff) == (layers, experts, top_k,
                                                                                    d_model, d_ff):
            return name
    return None


def record(model_or_path: torch.nn.Module | str | os.PathLike, prompts: Sequence[Sequence[int]] | Sequence[str],
           max_new_tokens: int, tokenizer=None, device: str = "cpu", *, ignore_eos: bool = False,
           prompts_file: str | os.PathLike | None = None, progress: bool = False) -> Trace:
    """Record one sequence per prompt under greedy ``generate`` (see the module docstring for what is recorded).

    ``model_or_path``: a built model (used on its own device; ``device`` is ignored) or a name/path loaded with
    ``AutoModelForSeq2SeqLM`` / ``AutoModelForCausalLM`` onto ``device``. Text prompts need ``tokenizer`` or a
    tokenizer loadable from the model's path. ``ignore_eos`` forces exactly ``max_new_tokens`` per prompt (EOS
    suppressed); otherwise a sequence ends at EOS as real decoding does. ``prompts_file`` only names the file in
    metadata and errors. The model is put in eval mode for the recording and restored after.
    """
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    if isinstance(model_or_path, torch.nn.Module):
        model = model_or_path
        model_id = str(getattr(model.config, "name_or_path", "") or "")
    else:
        model_id = str(model_or_path)
        model = _load_model(model_id, device)
    family_of(model)  # fail on an unsupported family before tokenising
    if not prompts:
        raise ValueError("record: no prompts given")
    token_prompts = _tokenize(prompts, tokenizer, model_id, None if prompts_file is None else str(prompts_file))
    vocab = model.get_input_embeddings().num_embeddings
    for i, p in enumerate(token_prompts):
        if not p:
            raise ValueError(f"prompt {i} is empty; every prompt needs at least one token")
        bad = [t for t in p if not 0 <= int(t) < vocab]
        if bad:
            raise ValueError(f"prompt {i} holds token id {bad[0]} but the model's vocabulary has {vocab} tokens")

    was_training = model.training
    model.eval()  # Switch multiplies router inputs by jitter noise in training mode
    seqs: list[RecordedSequence] = []
    try:
        with RouterHooks(model) as hooks:
            for p in tqdm(token_prompts, desc="recording", unit="prompt", disable=not progress):
                seqs.append(record_sequence(model, hooks, p, max_new_tokens, ignore_eos))
    finally:
        model.train(was_training)

    fam, sites = hooks.family, hooks.sites
    cfg = model.config
    d_model = int(getattr(cfg, "d_model", None) or cfg.hidden_size)
    name = preset_name(model_id, len(sites), hooks.num_experts, hooks.top_k, d_model,
                       int(getattr(cfg, fam.d_ff_attr))) if model_id else None
    lengths = [s.experts.shape[0] for s in seqs]
    generator = {"max_new_tokens": max_new_tokens, "family": fam.name, "decoding": "greedy",
                 "ignore_eos": ignore_eos, "prompts": None if prompts_file is None else Path(prompts_file).name}
    extra = {"model_id": model_id or type(model).__name__, "prompt_tokens": [s.prompt_tokens for s in seqs],
             "recorded_layers": [s.path for s in sites],
             "gates": "float32 softmax over all experts of the router logits, top-k "
                      + ("renormalised to sum 1" if sites[0].renormalise else "not renormalised"),
             "lookahead_source": "layer l's router on the input of MoE layer l-1's router (its normalised MoE-block "
                                 "input); layer 0 holds -1"}
    if fam.encoder_decoder:
        extra["encoder_prompt_tokens"] = [len(p) for p in token_prompts]
    meta = make_meta(name or extra["model_id"], hooks.num_experts, "recorded", generator=generator, **extra)
    return Trace(experts=np.concatenate([s.experts for s in seqs]),
                 seq_offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64), meta=meta,
                 gates=np.concatenate([s.gates for s in seqs]),
                 lookahead=np.concatenate([s.lookahead for s in seqs])).validate()


def _token_list(value, origin: str) -> list[int]:
    if not isinstance(value, list) or not value:
        raise PromptsError(f"{origin}: token ids must be a non-empty list of integers, got {json.dumps(value)[:80]}")
    for t in value:
        if isinstance(t, bool) or not isinstance(t, int) or t < 0:
            raise PromptsError(f"{origin}: token id {t!r} is not a non-negative integer")
    return value


def read_prompts(path: str | os.PathLike) -> list[list[int] | str]:
    """Read a prompts file: ``.jsonl``/``.ndjson`` holds per line a token-id list, ``{"input_ids": [...]}`` or
    ``{"text": "..."}`` (``input_ids`` wins when both are given); any other file is text, one prompt per line.
    Blank lines are skipped. Errors name the file and line."""
    p = Path(path)
    if not p.is_file():
        raise PromptsError(f"prompts file {p}: no such file")
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise PromptsError(f"prompts file {p}: not UTF-8 text ({exc})") from None
    prompts: list[list[int] | str] = []
    jsonl = p.suffix.lower() in JSONL_SUFFIXES
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        if not jsonl:
            prompts.append(line.strip())
            continue
        origin = f"prompts file {p} line {n}"
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise PromptsError(f"{origin}: not valid JSON ({exc.msg} at column {exc.colno})") from None
        if isinstance(item, list):
            prompts.append(_token_list(item, origin))
        elif isinstance(item, dict) and "input_ids" in item:
            prompts.append(_token_list(item["input_ids"], f"{origin} field 'input_ids'"))
        elif isinstance(item, dict) and "text" in item:
            if not isinstance(item["text"], str) or not item["text"]:
                raise PromptsError(f"{origin} field 'text': must be a non-empty string, got {item['text']!r}")
            prompts.append(item["text"])
        else:
            raise PromptsError(f"{origin}: expected a token-id list or an object with 'input_ids' or 'text', "
                               f"got {line.strip()[:80]}")
    if not prompts:
        raise PromptsError(f"prompts file {p}: holds no prompts (empty or only blank lines)")
    return prompts


def record_to_file(model: torch.nn.Module | str | os.PathLike, prompts_file: str | os.PathLike, max_new_tokens: int,
                   out: str | os.PathLike, device: str = "cpu") -> Path:
    """read_prompts + record (with a progress bar over prompts) + save; returns the written path."""
    prompts = read_prompts(prompts_file)
    trace = record(model, prompts, max_new_tokens, device=device, prompts_file=prompts_file, progress=True)
    return save(trace, out)
