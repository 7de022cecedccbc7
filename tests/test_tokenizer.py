import json

import pytest
import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2 as model_pb2

from pgolf.docs import synthetic_docs
from pgolf.io import read_json, sha256_file
from pgolf.tokenizer import build_tokenizer, check_tokenizer, train_tokenizer

CFG = {"vocab_size": 400, "model": None, "train_on_val": False, "max_train_docs": None}


def _proto(path):
    proto = model_pb2.ModelProto()
    proto.ParseFromString(path.read_bytes())
    return proto


def _write_docs(path, texts):
    path.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts), encoding="utf-8")
    return path


def test_trained_settings_match_the_official_tokenizer(tiny_corpus, shared_data):
    ours, official = _proto(tiny_corpus.tokenizer_model), _proto(shared_data / "fineweb_1024_bpe.model")
    for field in ("model_type", "character_coverage", "split_digits", "byte_fallback", "hard_vocab_limit",
                  "pad_id", "bos_id", "eos_id", "unk_id", "max_sentence_length", "split_by_whitespace"):
        assert getattr(ours.trainer_spec, field) == getattr(official.trainer_spec, field), field
    for field in ("name", "add_dummy_prefix", "remove_extra_whitespaces"):
        assert getattr(ours.normalizer_spec, field) == getattr(official.normalizer_spec, field), field
    assert ours.normalizer_spec.name == "nmt_nfkc" and not ours.normalizer_spec.add_dummy_prefix


def test_tiny_corpus_tokenizer(tiny_corpus):
    sp = check_tokenizer(tiny_corpus.tokenizer_model)
    assert sp.vocab_size() == 512
    assert sp.id_to_piece(sp.piece_to_id("▁")) == "▁"
    assert sum(sp.is_byte(i) for i in range(sp.vocab_size())) == 256
    meta = read_json(tiny_corpus.tokenizer_meta)
    assert meta == {"vocab_size": 512, "sha256": sha256_file(tiny_corpus.tokenizer_model),
                    "trained_on_docs": 270, "source": "trained"}
    ids = sp.encode("Zürich 2024 🚀")
    assert [sp.id_to_piece(i) for i in ids if sp.id_to_piece(i) in "2024"] == ["2", "0", "2", "4"]  # split_digits
    assert sp.decode(ids) == "Zürich 2024 🚀"  # byte fallback: nothing is lost


def test_train_on_val_and_max_train_docs(tmp_path):
    # The validation documents repeat a word no training document has: it becomes a piece only if val is seen.
    val = ["Qwyzzyq " * 500] * 5
    docs = _write_docs(tmp_path / "docs.jsonl", val + synthetic_docs(60, seed=2))
    meta = build_tokenizer(CFG, docs, 5, tmp_path / "a.model", tmp_path / "a.json")
    pieces = {spm.SentencePieceProcessor(model_file=str(tmp_path / "a.model")).id_to_piece(i) for i in range(400)}
    assert "▁Qwyzzyq" not in pieces and meta["trained_on_docs"] == 60
    meta = build_tokenizer({**CFG, "train_on_val": True}, docs, 5, tmp_path / "b.model", tmp_path / "b.json")
    pieces = {spm.SentencePieceProcessor(model_file=str(tmp_path / "b.model")).id_to_piece(i) for i in range(400)}
    assert "▁Qwyzzyq" in pieces and meta["trained_on_docs"] == 65
    meta = build_tokenizer({**CFG, "max_train_docs": 20}, docs, 5, tmp_path / "c.model", tmp_path / "c.json")
    assert meta["trained_on_docs"] == 20


def test_given_model_is_copied_unchanged(tmp_path, shared_data):
    official = shared_data / "fineweb_1024_bpe.model"
    meta = build_tokenizer({**CFG, "model": str(official)}, tmp_path / "unused.jsonl", 5,
                           tmp_path / "tok.model", tmp_path / "tok.json")
    assert (tmp_path / "tok.model").read_bytes() == official.read_bytes()
    assert meta == {"vocab_size": 1024, "sha256": sha256_file(official), "trained_on_docs": 0, "source": str(official)}


def test_given_model_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer.model: .*nope.model"):
        build_tokenizer({**CFG, "model": str(tmp_path / "nope.model")}, tmp_path / "d", 1, tmp_path / "m", tmp_path / "j")


def test_check_rejects_missing_space_piece(tiny_corpus, tmp_path):
    proto = _proto(tiny_corpus.tokenizer_model)
    (piece,) = [p for p in proto.pieces if p.piece == "▁"]
    piece.piece = "▁▁"  # "▁" no longer a standalone piece: spaces would cost three byte tokens
    bad = tmp_path / "nospace.model"
    bad.write_bytes(proto.SerializeToString())
    with pytest.raises(ValueError, match=r"nospace\.model: .*standalone piece"):
        check_tokenizer(bad)


def test_check_rejects_other_special_ids(tmp_path):
    model = tmp_path / "ids.model"
    spm.SentencePieceTrainer.train(sentence_iterator=iter(synthetic_docs(30, seed=1)), model_prefix=str(tmp_path / "ids"),
                                   vocab_size=100, unk_id=0, pad_id=-1, bos_id=1, eos_id=2)
    with pytest.raises(ValueError, match=r"ids\.model: special ids"):
        check_tokenizer(model)


def test_check_rejects_vocab_beyond_uint16(tiny_corpus, tmp_path):
    proto = _proto(tiny_corpus.tokenizer_model)
    for i in range(2**16 + 1 - len(proto.pieces)):
        proto.pieces.add(piece=f"x{i}x", score=-1e6)
    big = tmp_path / "big.model"
    big.write_bytes(proto.SerializeToString())
    with pytest.raises(ValueError, match=r"big\.model: vocab_size 65537"):
        check_tokenizer(big)


def test_check_rejects_non_model(tmp_path):
    junk = tmp_path / "junk.model"
    junk.write_bytes(b"not a model")
    with pytest.raises(ValueError, match=r"junk\.model: not a SentencePiece model"):
        check_tokenizer(junk)


def test_failed_training_writes_nothing(tmp_path):
    with pytest.raises(ValueError, match=r"small\.model: .*tokenizer\.vocab_size=270.*Vocabulary size is smaller"):
        train_tokenizer(synthetic_docs(50, seed=1), 270, tmp_path / "small.model")  # < 260 + alphabet
    with pytest.raises(ValueError, match=r"empty\.model"):
        train_tokenizer(["", " \x00 "], 400, tmp_path / "empty.model")  # nothing left to train on
    assert not list(tmp_path.iterdir())
