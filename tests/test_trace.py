"""The trace format: round trip, atomic writes, and one clear error per kind of bad input."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest

from artifact.traces.trace import SCHEMA_VERSION, Trace, TraceError, concat, load, make_meta, save


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
    meta = dict(tr.meta, schema_version=SCHEMA_VERSION + 41)
    with pytest.raises(TraceError, match=r"'meta.schema_version': unknown schema version 42"):
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
