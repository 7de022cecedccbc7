"""bench/make_caseops_shards.py: the 1.0611 record's CaseOps shards from the quality set-up's documents.

Needs the record's lossless_caps.py and tokenizer in .ref0611/ (bench/prepare_reference.sh with
REF_RECORD=1.0611) and the real samples of ../shared/data; skips without them.
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pgolf.shard_format import read_shard

ROOT = Path(__file__).resolve().parents[1]
REF = ROOT / ".ref0611"
sys.path.insert(0, str(ROOT / "bench"))
import make_caseops_shards as mcs  # noqa: E402
from make_text_shards import VAL_FILE  # noqa: E402

pytestmark = pytest.mark.skipif(not (REF / "lossless_caps.py").is_file(),
                                reason="no .ref0611/ (REF_RECORD=1.0611 bash bench/prepare_reference.sh)")


@pytest.fixture(scope="module")
def samples(shared_data, tmp_path_factory):
    """The 200 validation documents and one small training file (the builder reads every other JSONL)."""
    folder = tmp_path_factory.mktemp("samples")
    for name in (VAL_FILE, "fineweb_edu_10bt_head150.jsonl"):
        (folder / name).symlink_to(shared_data / name)
    return folder


@pytest.fixture(scope="module")
def built(samples, tmp_path_factory):
    out = tmp_path_factory.mktemp("caseops") / "data_caseops"
    return out, mcs.build(samples, REF, out)


def texts(path: Path) -> list[str]:
    return [json.loads(line)["text"] for line in path.read_bytes().split(b"\n") if line.strip()]


def test_sidecar_holds_each_validation_documents_original_utf8_bytes(built, samples):
    out, _ = built
    data = out / "datasets" / mcs.DATASET
    tokens = np.asarray(read_shard(data / "fineweb_val_000000.bin"), dtype=np.int64)
    sidecar = np.asarray(read_shard(data / "fineweb_val_bytes_000000.bin"), dtype=np.int64)
    assert tokens.shape == sidecar.shape
    starts = np.flatnonzero(tokens == mcs.BOS_ID)
    docs = texts(samples / VAL_FILE)
    assert len(starts) == len(docs) == 200 and starts[0] == 0
    assert (sidecar[starts] == 0).all()
    per_doc = np.add.reduceat(sidecar, starts)
    assert per_doc.tolist() == [len(t.encode("utf-8")) for t in docs]  # exact, document by document
    assert (out / "tokenizers" / mcs.MODEL).read_bytes() == (REF / "data" / "tokenizers" / mcs.MODEL).read_bytes()


def test_training_stream_is_every_training_document_after_bos(built, samples):
    out, summary = built
    tokens = np.asarray(read_shard(out / "datasets" / mcs.DATASET / "fineweb_train_000000.bin"))
    assert (tokens == mcs.BOS_ID).sum() == summary["train_docs"] == len(texts(samples / "fineweb_edu_10bt_head150.jsonl"))
    assert tokens[0] == mcs.BOS_ID and len(tokens) == summary["train_tokens"]


def test_the_records_own_loader_reads_them(built):
    """The record's ValidationData (its code, under CASEOPS_ENABLED=1) keeps k·2048 + 1 tokens and the
    matching slice of the sidecar."""
    out, summary = built
    data = out / "datasets" / mcs.DATASET
    code = ("import sys; sys.path[:0] = [sys.argv[1], sys.argv[2]]; import train_gpt as r; "
            "v = r.ValidationData(r.Hyperparameters(), 'cpu'); "
            "print(v.val_tokens.numel(), int(v.val_bytes.sum()), int(v.val_bytes[0]))")
    env = dict(os.environ, CASEOPS_ENABLED="1", DATA_PATH=str(data), TOKENIZER_PATH=str(out / "tokenizers" / mcs.MODEL))
    run = subprocess.run([sys.executable, "-c", code, str(ROOT / "bench" / "ref_shim"), str(REF)], env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    kept, kept_bytes, first = map(int, run.stdout.split()[-3:])
    assert kept == (summary["val_tokens"] - 1) // 2048 * 2048 + 1
    sidecar = np.asarray(read_shard(data / "fineweb_val_bytes_000000.bin"), dtype=np.int64)
    assert kept_bytes == sidecar[:kept].sum() and first == 0


def test_a_sidecar_that_counts_the_case_operators_is_refused_and_nothing_is_left(samples, tmp_path):
    """The known CaseOps failure (operator sentinels counted as bytes, about +9 %): the build stops."""
    ref = tmp_path / "ref"
    (ref / "data" / "tokenizers").mkdir(parents=True)
    shutil.copy(REF / "data" / "tokenizers" / mcs.MODEL, ref / "data" / "tokenizers" / mcs.MODEL)
    broken = (REF / "lossless_caps.py").read_text() + '''
_counts = surface_piece_original_byte_counts
def surface_piece_original_byte_counts(surfaces, **kwargs):
    surfaces = list(surfaces)
    return [c + sum(len(ch.encode()) for ch in s if "\\ue001" <= ch <= "\\ue004")
            for c, s in zip(_counts(surfaces, **kwargs), surfaces)]
'''
    (ref / "lossless_caps.py").write_text(broken)
    out = tmp_path / "out" / "data_caseops"
    with pytest.raises(SystemExit, match="byte sidecar sums to"):
        mcs.build(samples, ref, out)
    assert not out.exists() and not any((tmp_path / "out").glob("*"))


def test_a_failed_write_leaves_the_previous_folder_and_no_partial_one(samples, tmp_path, monkeypatch):
    out = tmp_path / "data_caseops"
    out.mkdir()
    (out / "previous").write_text("kept")

    def fail_on_train(folder, prefix, values):
        if prefix == "fineweb_train":
            raise OSError("disk full")
        return write_stream(folder, prefix, values)

    write_stream = mcs.write_stream
    monkeypatch.setattr(mcs, "write_stream", fail_on_train)
    with pytest.raises(OSError, match="disk full"):
        mcs.build(samples, REF, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data_caseops"]
    assert (out / "previous").read_text() == "kept"


def test_same_shards_as_the_records_own_prepare_caseops_data(built, samples, tmp_path):
    """The record's prepare_caseops_data.py on the same documents (validation first) writes the same bytes.

    It calls encode_as_immutable_proto, which sentencepiece 0.2.1+ no longer has; it is aliased here to
    encode_as_proto, whose pieces carry the same ids and surfaces (the only fields it reads).
    """
    from pgolf.docs import docs_jsonl_bytes

    out, summary = built
    docs = tmp_path / "docs.jsonl"
    val = texts(samples / VAL_FILE)
    docs.write_bytes(docs_jsonl_bytes(val + texts(samples / "fineweb_edu_10bt_head150.jsonl")))
    code = ("import runpy, sys, sentencepiece as s; "
            "s.SentencePieceProcessor.encode_as_immutable_proto = s.SentencePieceProcessor.encode_as_proto; "
            "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')")
    run = subprocess.run([sys.executable, "-c", code, str(REF / "prepare_caseops_data.py"), "--docs", str(docs),
                          "--out", str(tmp_path / "record"), "--sp", str(REF / "data" / "tokenizers" / mcs.MODEL),
                          "--val-docs", str(len(val))], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    theirs = tmp_path / "record" / "datasets" / mcs.DATASET
    ours = out / "datasets" / mcs.DATASET
    names = sorted(p.name for p in theirs.glob("*.bin"))
    assert names == sorted(p.name for p in ours.glob("*.bin")) == [
        "fineweb_train_000000.bin", "fineweb_val_000000.bin", "fineweb_val_bytes_000000.bin"]
    for name in names:
        assert (theirs / name).read_bytes() == (ours / name).read_bytes(), name
