"""The tokenizer stage: train a SentencePiece BPE with the challenge's exact settings, or adopt a given `.model`.

The settings are those of the official exporter (openai/parameter-golf `data/download_hf_docs_and_tokenize.py`) and
of the published `fineweb_1024_bpe.model`'s trainer_spec: byte fallback (so no text is ever <unk> and every byte is
countable), NFKC, split digits, no dummy prefix, ids pad 0 / bos 1 / eos 2 / unk 3, hard_vocab_limit off. By default
it never sees validation documents, as the challenge tokenizers never did.
"""
from __future__ import annotations

import io
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Iterable

import sentencepiece as spm

from pgolf.docs import load_split
from pgolf.hub import download_dataset_file
from pgolf.io import atomic_path, sha256_file, write_bytes, write_json

log = logging.getLogger(__name__)

SPECIAL_IDS = {"pad": 0, "bos": 1, "eos": 2, "unk": 3}
MAX_VOCAB_SIZE = 2**16  # shards store ids as uint16
SPACE_PIECE = "\u2581"  # "▁", SentencePiece's whitespace symbol

TRAINER_SETTINGS = dict(
    model_type="bpe",
    character_coverage=0.999,
    byte_fallback=True,
    split_digits=True,
    normalization_rule_name="nmt_nfkc",
    add_dummy_prefix=False,
    pad_id=SPECIAL_IDS["pad"], bos_id=SPECIAL_IDS["bos"], eos_id=SPECIAL_IDS["eos"], unk_id=SPECIAL_IDS["unk"],
    # Off, as in the official model: a tiny corpus may not support `vocab_size` pieces; SentencePiece then stops
    # early instead of failing, and the vocabulary size actually reached goes into the meta.
    hard_vocab_limit=False,
)


def _training_sentences(texts: Iterable[str]) -> Iterable[str]:
    # Same cleaning as the official exporter: NULs become spaces, surrounding whitespace goes, empty docs are skipped.
    # Documents longer than SentencePiece's max_sentence_length (4192 bytes) are skipped by the trainer, as there.
    for text in texts:
        text = text.replace("\x00", " ").strip()
        if text:
            yield text


def train_tokenizer(texts: Iterable[str], vocab_size: int, out_model: str | os.PathLike,
                    min_log_level: int = 0) -> Path:
    """Train a BPE model on `texts` straight from memory and write it atomically to `out_model`.

    `min_log_level` 0 lets SentencePiece print its own progress to stderr; 1 keeps only warnings.
    """
    model = io.BytesIO()
    spm.set_min_log_level(min_log_level)
    start = time.perf_counter()
    log.info("training SentencePiece BPE, vocab_size=%d", vocab_size)
    try:
        spm.SentencePieceTrainer.train(sentence_iterator=iter(_training_sentences(texts)), model_writer=model,
                                       vocab_size=vocab_size, **TRAINER_SETTINGS)
    except RuntimeError as err:  # e.g. vocab_size below 260 byte/special pieces + the corpus alphabet
        raise ValueError(f"{out_model}: SentencePiece training failed (tokenizer.vocab_size={vocab_size}): {err}") from None
    _check(spm.SentencePieceProcessor(model_proto=model.getvalue()), out_model)  # before anything is written
    write_bytes(out_model, model.getvalue())
    log.info("trained %s in %.1f s", out_model, time.perf_counter() - start)
    return Path(out_model)


def check_tokenizer(model_path: str | os.PathLike) -> spm.SentencePieceProcessor:
    """Load a model and check what the pipeline relies on; raises ValueError naming the file."""
    try:
        sp = spm.SentencePieceProcessor(model_file=str(model_path))
    except (OSError, RuntimeError) as err:
        raise ValueError(f"{model_path}: not a SentencePiece model ({err})") from None
    return _check(sp, model_path)


def _check(sp: spm.SentencePieceProcessor, model_path: str | os.PathLike) -> spm.SentencePieceProcessor:
    ids = {"pad": sp.pad_id(), "bos": sp.bos_id(), "eos": sp.eos_id(), "unk": sp.unk_id()}
    if ids != SPECIAL_IDS:
        raise ValueError(f"{model_path}: special ids {ids}, expected {SPECIAL_IDS}")
    if sp.vocab_size() > MAX_VOCAB_SIZE:
        raise ValueError(f"{model_path}: vocab_size {sp.vocab_size()} does not fit uint16 shards (max {MAX_VOCAB_SIZE})")
    # Without a standalone "▁" every space after a byte piece or a rare character costs 3 byte tokens (a famous bug).
    # BPE keeps every character it covers as a piece, and "▁" is the most frequent character of any text with spaces,
    # so training guarantees it; we check rather than force it with user_defined_symbols, which would change ids.
    space_id = sp.piece_to_id(SPACE_PIECE)
    if space_id == sp.unk_id() or sp.id_to_piece(space_id) != SPACE_PIECE:
        raise ValueError(f"{model_path}: '{SPACE_PIECE}' (U+2581) is not a standalone piece")
    return sp


def build_tokenizer(cfg: dict, docs_jsonl: str | os.PathLike, num_val_docs: int,
                    out_model: str | os.PathLike, out_meta: str | os.PathLike) -> dict:
    """The tokenizer stage; `cfg` is the `tokenizer:` config section."""
    if cfg.get("hf_repo"):  # the published tokenizer that matches the published shards
        given = download_dataset_file(cfg["hf_repo"], cfg["hf_filename"], cfg.get("hf_revision"))
    else:
        given = Path(cfg["model"]) if cfg.get("model") else None
    if given is not None:
        if not given.is_file():
            raise FileNotFoundError(f"tokenizer.model: {given}: file not found")
        check_tokenizer(given)
        with atomic_path(out_model) as tmp:
            shutil.copyfile(given, tmp)
        source, trained_on_docs = (f"hf:{cfg['hf_repo']}/{cfg['hf_filename']}" if cfg.get("hf_repo") else str(given)), 0
    else:
        val, train = load_split(docs_jsonl, num_val_docs)
        texts = val + train if cfg.get("train_on_val") else train
        if cfg.get("max_train_docs") is not None:
            texts = texts[: int(cfg["max_train_docs"])]
        train_tokenizer(texts, int(cfg["vocab_size"]), out_model)
        source, trained_on_docs = "trained", len(texts)
    sp = check_tokenizer(out_model)
    if sp.vocab_size() != int(cfg["vocab_size"]):
        log.warning("%s: vocab_size %d, tokenizer.vocab_size asks %d", out_model, sp.vocab_size(), cfg["vocab_size"])
    meta = {"vocab_size": sp.vocab_size(), "sha256": sha256_file(out_model),
            "trained_on_docs": trained_on_docs, "source": source}
    write_json(out_meta, meta)
    return meta
