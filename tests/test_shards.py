import json

import numpy as np
import pytest
import sentencepiece as spm

from pgolf.docs import load_split
from pgolf.io import read_json, sha256_file
from pgolf.shard_format import load_tokens, read_shard, shard_paths, write_shard
from pgolf.shards import build_shards


def test_round_trip_and_exact_layout(tmp_path):
    tokens = np.array([1, 0, 65535, 260, 7], dtype=np.int64)
    path = tmp_path / "fineweb_val_000000.bin"
    write_shard(path, tokens)
    raw = path.read_bytes()
    assert len(raw) == 1024 + 2 * 5
    header = np.frombuffer(raw[:1024], dtype="<i4")
    assert header[:3].tolist() == [20240520, 1, 5] and not header[3:].any()
    assert np.frombuffer(raw[1024:], dtype="<u2").tolist() == tokens.tolist()
    out = read_shard(path)
    assert out.dtype == np.uint16 and out.tolist() == tokens.tolist()


def test_empty_shard(tmp_path):
    write_shard(tmp_path / "e.bin", [])
    assert read_shard(tmp_path / "e.bin").size == 0


def test_write_rejects_ids_beyond_uint16(tmp_path):
    with pytest.raises(ValueError, match="big.bin: token ids outside uint16"):
        write_shard(tmp_path / "big.bin", [1, 65536])
    assert not (tmp_path / "big.bin").exists()


def _corrupt(tmp_path, name, header_patch=None, cut_bytes=0, extra=b""):
    path = tmp_path / name
    write_shard(path, np.arange(100))
    raw = bytearray(path.read_bytes())
    if header_patch:
        index, value = header_patch
        raw[4 * index:4 * index + 4] = np.array([value], dtype="<i4").tobytes()
    path.write_bytes(bytes(raw[:len(raw) - cut_bytes]) + extra)
    return path


@pytest.mark.parametrize("name, kwargs, message", [
    ("magic.bin", {"header_patch": (0, 20240521)}, "bad magic 20240521"),
    ("version.bin", {"header_patch": (1, 2)}, "unsupported version 2"),
    ("count.bin", {"header_patch": (2, 101)}, "1224 bytes, but the header's 101 tokens need 1226"),
    ("truncated.bin", {"cut_bytes": 2}, "1222 bytes, but the header's 100 tokens need 1224"),
    ("padded.bin", {"extra": b"\0\0"}, "1226 bytes"),
    ("short.bin", {"cut_bytes": 1224 - 1000}, "1000 bytes, shorter than the 1024-byte header"),
])
def test_read_rejects_corrupt_shards(tmp_path, name, kwargs, message):
    path = _corrupt(tmp_path, name, **kwargs)
    with pytest.raises(ValueError) as err:
        read_shard(path)
    assert str(path) in str(err.value) and message in str(err.value)


def test_shard_paths(tmp_path):
    for i in (2, 0, 10, 1):
        write_shard(tmp_path / f"fineweb_train_{i:06d}.bin", [1])
    assert [p.name for p in shard_paths(tmp_path)] == [f"fineweb_train_{i:06d}.bin" for i in (0, 1, 2, 10)]
    with pytest.raises(FileNotFoundError, match="no \\*.bin shards"):
        shard_paths(tmp_path / "nothing")


def _split_docs(stream: np.ndarray) -> list[list[int]]:
    starts = np.flatnonzero(stream == 1).tolist() + [stream.size]
    assert starts[0] == 0  # the stream opens with a document's BOS
    return [stream[a + 1:b].tolist() for a, b in zip(starts[:-1], starts[1:])]


def test_tiny_corpus_shards(tiny_corpus):
    manifest = read_json(tiny_corpus.manifest)
    sp = spm.SentencePieceProcessor(model_file=str(tiny_corpus.tokenizer_model))
    assert manifest["tokens_per_shard"] == tiny_corpus.tokens_per_shard == 10_000
    assert manifest["vocab_size"] == 512 and manifest["tokenizer_sha256"] == sha256_file(tiny_corpus.tokenizer_model)
    val, train = load_split(tiny_corpus.docs_jsonl, tiny_corpus.num_val_docs)
    for split, texts, directory in (("val", val, tiny_corpus.val_dir), ("train", train, tiny_corpus.train_dir)):
        info = manifest["splits"][split]
        paths = shard_paths(directory)
        assert [p.name for p in paths] == info["shards"] == [f"fineweb_{split}_{i:06d}.bin" for i in range(len(paths))]
        sizes = [read_shard(p).size for p in paths]
        assert len(paths) >= 2 and all(s == 10_000 for s in sizes[:-1]) and 0 < sizes[-1] <= 10_000
        stream = load_tokens(paths)
        assert stream.size == info["num_tokens"] and info["num_docs"] == len(texts)
        # one BOS per document, no EOS anywhere, and the documents read back in order across shard boundaries
        assert _split_docs(stream) == sp.encode(texts)
        assert not (stream == 2).any()
        assert any(read_shard(p)[0] != 1 for p in paths[1:])  # some document runs on into the next shard


def test_matches_the_derived_official_shard(tmp_path, shared_data):
    # shared/data's shard was made with the official exporter's recipe from the same 200 docs and sp1024 model.
    docs = tmp_path / "docs.jsonl"
    sample = (shared_data / "fineweb_pg_docs_selected_sample200.jsonl").read_bytes().rstrip(b"\n") + b"\n"
    docs.write_bytes(sample + json.dumps({"text": "one train doc"}).encode() + b"\n")
    manifest = build_shards(docs, 200, shared_data / "fineweb_1024_bpe.model", 10**8,
                            tmp_path / "train", tmp_path / "val", tmp_path / "manifest.json")
    ours = (tmp_path / "val" / "fineweb_val_000000.bin").read_bytes()
    assert ours == (shared_data / "derived" / "fineweb_sp1024_sample200_val_000000.bin").read_bytes()
    assert manifest["splits"]["val"]["num_tokens"] == 628_457 and manifest["splits"]["train"]["num_docs"] == 1


def test_failure_leaves_no_output(tmp_path, tiny_corpus):
    with pytest.raises(ValueError, match="tokens_per_shard"):
        build_shards(tiny_corpus.docs_jsonl, 30, tiny_corpus.tokenizer_model, 0,
                     tmp_path / "train", tmp_path / "val", tmp_path / "manifest.json")
    with pytest.raises(ValueError, match="not a SentencePiece model"):
        build_shards(tiny_corpus.docs_jsonl, 30, tiny_corpus.docs_jsonl, 100,
                     tmp_path / "train", tmp_path / "val", tmp_path / "manifest.json")
    assert not list(tmp_path.iterdir())

