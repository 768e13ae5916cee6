"""How fast the synthetic generator makes routing decisions (a benchmark measures; nothing here asserts a time)."""

from __future__ import annotations

from artifact.models import get_model
from artifact.traces.synthetic import generate

# switch-base-128: 640 sequences x 128 tokens x 12 MoE layers = 983,040 token-layer decisions (fixed lengths so the
# count is exact), with gates and the lookahead field, as the presets make them.
SEQUENCES, TOKENS = 640, 128


def test_generate_switch_1m_decisions(benchmark):
    spec = get_model("switch-base-128")
    trace = benchmark.pedantic(
        generate,
        args=("switch-base-128", SEQUENCES, TOKENS, 0),
        kwargs={"length_spread": 0.0},
        rounds=5,
        iterations=1,
        warmup_rounds=1,
    )
    decisions = trace.num_tokens * spec.moe_layers
    benchmark.extra_info["token_layer_decisions"] = decisions
    if benchmark.stats is not None:  # None under --benchmark-disable (the cases then run once, untimed)
        benchmark.extra_info["decisions_per_s"] = decisions / benchmark.stats.stats.mean
        benchmark.extra_info["decisions_per_s_best"] = decisions / benchmark.stats.stats.min
