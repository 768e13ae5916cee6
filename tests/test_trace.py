"""The trace format: round trip, atomic writes, and one clear error per kind of bad input."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest

from artifact.traces.trace import (
    DECODE,
    PREFILL,
    SCHEMA_VERSION,
    Trace,
    TraceError,
    concat,
    load,
    make_meta,
    phase_tokens,
    save,
    select,
)


def _trace(tokens=(3, 4), layers=12, k=1, experts=128, model="switch-base-128", lookahead=True, gates=True, seed=0):
    rng = np.random.default_rng(seed)
    T = sum(tokens)
    ex = np.stack([rng.permutation(experts)[:k] for _ in range(T * layers)]).reshape(T, layers, k).astype(np.int16)
    off = np.concatenate([[0], np.cumsum(tokens)]).astype(np.int64)
    la = None
    if lookahead:
        la = ex.copy()
        la[:, 0] = -1
    g = rng.random((T, layers, k)).astype(np.float16) if gates else None
    return Trace(ex, off, make_meta(model, experts, "test"), g, la)


def _write_raw(path, **arrays):
    np.savez(path, **arrays)
    return path


def _arrays(tr: Trace, **override):
    d = {"experts": tr.experts, "seq_offsets": tr.seq_offsets, "meta": np.array(json.dumps(tr.meta)),
         "gates": tr.gates, "lookahead": tr.lookahead}
    d.update(override)
    return {k: v for k, v in d.items() if v is not None}


def test_round_trip(tmp_path):
    tr = _trace()
    p = save(tr, tmp_path / "t.npz")
    back = load(p)
    np.testing.assert_array_equal(back.experts, tr.experts)
    np.testing.assert_array_equal(back.seq_offsets, tr.seq_offsets)
    np.testing.assert_array_equal(back.gates, tr.gates)
    np.testing.assert_array_equal(back.lookahead, tr.lookahead)
    assert back.meta == tr.meta
    assert back.num_sequences == 2 and back.num_tokens == 7 and back.layers == 12 and back.top_k == 1
    assert back.sequence(1) == slice(3, 7)


def test_optional_fields_absent(tmp_path):
    tr = _trace(lookahead=False, gates=False)
    back = load(save(tr, tmp_path / "t.npz"))
    assert back.gates is None and back.lookahead is None


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    p = save(_trace(), tmp_path / "t.npz")
    before = p.read_bytes()
    bad = _trace()
    bad.experts[0, 0, 0] = 500
    with pytest.raises(TraceError):
        save(bad, p)
    assert p.read_bytes() == before
    assert [q.name for q in tmp_path.iterdir()] == ["t.npz"]  # no temp file left behind


def test_concat():
    a, b = _trace(seed=1), _trace(tokens=(2,), seed=2)
    c = concat([a, b])
    assert c.num_sequences == 3 and c.num_tokens == 9
    np.testing.assert_array_equal(c.experts[7:], b.experts)


@pytest.mark.parametrize(
    "override, field, words",
    [
        ({"experts": np.zeros((7, 12, 1), np.int32)}, "experts", "int16"),
        ({"experts": np.zeros((7, 12), np.int16)}, "experts", "shape"),
        ({"seq_offsets": np.array([0, 3, 7], np.int32)}, "seq_offsets", "int64"),
        ({"seq_offsets": np.array([0, 5, 3, 7], np.int64)}, "seq_offsets", "increasing"),
        ({"seq_offsets": np.array([0, 3, 6], np.int64)}, "seq_offsets", "number of tokens"),
        ({"seq_offsets": np.array([1, 3, 7], np.int64)}, "seq_offsets", "start at 0"),
        ({"gates": np.zeros((7, 12, 1), np.float32)}, "gates", "float16"),
        ({"gates": np.zeros((7, 11, 1), np.float16)}, "gates", "shape"),
        ({"lookahead": np.zeros((7, 12, 1), np.int32)}, "lookahead", "int16"),
    ],
)
def test_bad_dtype_shape_offsets(tmp_path, override, field, words):
    p = _write_raw(tmp_path / "bad.npz", **_arrays(_trace(), **override))
    with pytest.raises(TraceError) as ei:
        load(p)
    msg = str(ei.value)
    assert str(p) in msg and f"'{field}'" in msg and words in msg


def test_expert_out_of_range(tmp_path):
    tr = _trace()
    tr.experts[5, 7, 0] = 131
    p = _write_raw(tmp_path / "x.npz", **_arrays(tr))
    with pytest.raises(TraceError, match=r"x\.npz: field 'experts': token 5 layer 7 slot 0 has expert id 131 but "
                                         r"the model has 128 experts"):
        load(p)


def test_negative_expert(tmp_path):
    tr = _trace()
    tr.experts[0, 0, 0] = -1
    with pytest.raises(TraceError, match="expert id -1"):
        load(_write_raw(tmp_path / "x.npz", **_arrays(tr)))


def test_duplicate_in_topk(tmp_path):
    tr = _trace(k=2, model="x", experts=8)
    tr.experts[2, 3] = [4, 4]
    with pytest.raises(TraceError, match=r"'experts': token 2 layer 3 lists expert 4 twice"):
        load(_write_raw(tmp_path / "x.npz", **_arrays(tr)))


def test_lookahead_layer0_must_be_empty(tmp_path):
    tr = _trace()
    tr.lookahead[1, 0, 0] = 3
    with pytest.raises(TraceError, match=r"'lookahead': layer 0 has no prediction"):
        load(_write_raw(tmp_path / "x.npz", **_arrays(tr)))


def test_lookahead_out_of_range(tmp_path):
    tr = _trace()
    tr.lookahead[1, 2, 0] = 300
    with pytest.raises(TraceError, match=r"'lookahead': token 1 layer 2 slot 0 has expert id 300"):
        load(_write_raw(tmp_path / "x.npz", **_arrays(tr)))


@pytest.mark.parametrize("missing", ["experts", "seq_offsets", "meta"])
def test_missing_required_array(tmp_path, missing):
    arrays = _arrays(_trace())
    del arrays[missing]
    with pytest.raises(TraceError, match=f"'{missing}': required field is missing"):
        load(_write_raw(tmp_path / "x.npz", **arrays))


@pytest.mark.parametrize("key", ["schema_version", "model", "num_experts", "source"])
def test_missing_meta_field(tmp_path, key):
    tr = _trace()
    meta = dict(tr.meta)
    del meta[key]
    with pytest.raises(TraceError, match=f"'meta.{key}': required field is missing"):
        load(_write_raw(tmp_path / "x.npz", **_arrays(tr, meta=np.array(json.dumps(meta)))))


def test_unknown_schema_version(tmp_path):
    tr = _trace()
    meta = dict(tr.meta, schema_version=42)
    with pytest.raises(TraceError, match=r"'meta.schema_version': unknown schema version 42 \(this version reads 1, "
                                         r"2\)"):
        load(_write_raw(tmp_path / "x.npz", **_arrays(tr, meta=np.array(json.dumps(meta)))))


def test_meta_not_json(tmp_path):
    with pytest.raises(TraceError, match=r"'meta': is not a JSON object"):
        load(_write_raw(tmp_path / "x.npz", **_arrays(_trace(), meta=np.array("{nope"))))


def test_preset_shape_mismatch(tmp_path):
    tr = _trace(layers=6)
    with pytest.raises(TraceError, match=r"layers is 6 but model preset switch-base-128 has 12"):
        load(_write_raw(tmp_path / "x.npz", **_arrays(tr)))


def test_truncated_file(tmp_path):
    p = save(_trace(), tmp_path / "t.npz")
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(TraceError, match=r"t\.npz: truncated or corrupt"):
        load(p)


def test_corrupt_member(tmp_path):
    p = tmp_path / "c.npz"
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("experts.npy", b"not an array")
        z.writestr("seq_offsets.npy", b"nor this")
        z.writestr("meta.npy", b"x")
    with pytest.raises(TraceError, match="truncated or corrupt"):
        load(p)


def test_not_a_file(tmp_path):
    with pytest.raises(TraceError, match="no such file"):
        load(tmp_path / "absent.npz")


# --- schema version 2: phase, top-k used and native ------------------------------------------------------------------


def _phased(tokens=(3, 4), prefill=(1, 2), **kw):
    tr = _trace(tokens, **kw)
    ph = np.concatenate([[PREFILL] * p + [DECODE] * (n - p) for n, p in zip(tokens, prefill)]).astype(np.int8)
    return Trace(tr.experts, tr.seq_offsets, tr.meta, tr.gates, tr.lookahead, ph)


def test_phase_round_trip(tmp_path):
    assert SCHEMA_VERSION == 2
    tr = _phased()
    back = load(save(tr, tmp_path / "t.npz"))
    np.testing.assert_array_equal(back.phase, [0, 1, 1, 0, 0, 1, 1])
    assert back.phase_counts() == {"prefill": 3, "decode": 4}
    assert load(save(_trace(), tmp_path / "u.npz")).phase_counts() == {"unknown": 7}


def test_version_1_file_still_loads(tmp_path):
    tr = _trace()
    meta = dict(tr.meta, schema_version=1)
    back = load(_write_raw(tmp_path / "v1.npz", **_arrays(tr, meta=np.array(json.dumps(meta)))))
    assert back.meta["schema_version"] == 1 and back.phase is None
    np.testing.assert_array_equal(back.experts, tr.experts)


@pytest.mark.parametrize("phase, version, words", [
    (np.array([0, 1, 1, 0, 0, 1, 1], np.int8), 1, "needs schema version 2, the file says 1"),
    (np.array([0, 1, 1, 0, 0, 1, 1], np.int32), 2, "dtype must be int8"),
    (np.array([0, 1, 1, 0, 0, 1], np.int8), 2, r"shape \[6\] differs from \[tokens\] = \[7\]"),
    (np.array([0, 1, 2, 0, 0, 1, 1], np.int8), 2, r"token 2 holds 2 \(0 prefill, 1 decode\)"),
    (np.array([0, 1, 0, 0, 0, 1, 1], np.int8), 2, "sequence 0: token 2 is prefill after a decode token"),
])
def test_bad_phase(tmp_path, phase, version, words):
    tr = _trace()
    meta = dict(tr.meta, schema_version=version)
    p = _write_raw(tmp_path / "x.npz", **_arrays(tr, meta=np.array(json.dumps(meta)), phase=phase))
    with pytest.raises(TraceError, match=r"x\.npz: field 'phase': " + words):
        load(p)


def test_phase_may_restart_at_a_new_sequence():
    tr = _phased(prefill=(0, 4))  # sequence 0 all decode, sequence 1 all prefill
    assert tr.validate().phase_counts() == {"prefill": 4, "decode": 3}


def test_select_and_phase_tokens():
    tr = _phased(tokens=(3, 4, 2), prefill=(1, 2, 2))
    dec = phase_tokens(tr, DECODE)
    assert dec.seq_lengths.tolist() == [2, 2]  # the third sequence has no decode token: dropped
    np.testing.assert_array_equal(dec.experts, tr.experts[[1, 2, 5, 6]])
    np.testing.assert_array_equal(dec.gates, tr.gates[[1, 2, 5, 6]])
    pre = phase_tokens(tr, PREFILL)
    assert pre.seq_lengths.tolist() == [1, 2, 2]
    assert phase_tokens(_trace(), DECODE).num_tokens == 7  # no phase field: every token
    with pytest.raises(ValueError, match="no prefill tokens"):
        phase_tokens(_phased(prefill=(0, 0)), PREFILL)
    assert select(tr, np.ones(9, bool)).seq_lengths.tolist() == [3, 4, 2]


def test_concat_keeps_phase_only_if_all_have_it():
    assert concat([_phased(), _phased()]).phase_counts() == {"prefill": 6, "decode": 8}
    assert concat([_phased(), _trace()]).phase is None


def test_top_k_meta_fields(tmp_path):
    tr = _trace(k=2, experts=8, model="x")
    ok = Trace(tr.experts, tr.seq_offsets, dict(tr.meta, top_k_used=2, native_top_k=4))
    assert ok.validate().native_top_k == 4
    for meta, words in ((dict(tr.meta, top_k_used=3), "'meta.top_k_used': is 3 but the experts hold top-2"),
                        (dict(tr.meta, native_top_k=1), "'meta.native_top_k': is 1 but the experts hold top-2")):
        with pytest.raises(TraceError, match=words):
            Trace(tr.experts, tr.seq_offsets, meta).validate()


def test_preset_top_k_fewer_allowed_more_refused(tmp_path):
    fewer = _trace(layers=16, k=4, experts=64, model="olmoe-1b-7b")
    assert fewer.validate().native_top_k == 8  # from the preset
    more = _trace(layers=12, k=2, model="switch-base-128")
    with pytest.raises(TraceError, match=r"'experts': top_k is 2 but model preset switch-base-128 routes top-1: a "
                                         r"trace may use fewer experts per token than its model, never more"):
        load(_write_raw(tmp_path / "x.npz", **_arrays(more)))
    wrong = Trace(fewer.experts, fewer.seq_offsets, dict(fewer.meta, native_top_k=6))
    with pytest.raises(TraceError, match=r"'meta.native_top_k': is 6 but model preset olmoe-1b-7b routes top-8"):
        wrong.validate()
