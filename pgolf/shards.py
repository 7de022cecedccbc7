"""The shards stage: documents → challenge-format token shards (format in pgolf.shard_format).

Each document is [BOS] + encode(text) with no EOS; documents run on across shard boundaries; shards hold
`tokens_per_shard` tokens (the last one fewer). Shards written here load in the official `train_gpt.py` and back.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import sentencepiece as spm
from tqdm import tqdm

from pgolf.docs import load_split
from pgolf.io import atomic_dir, sha256_file, write_json
from pgolf.shard_format import write_shard
from pgolf.tokenizer import check_tokenizer

log = logging.getLogger(__name__)

BOS_ID = 1
ENCODE_BATCH_DOCS = 256  # sp.encode on a list runs in C++ threads: much faster than one call per document


class _ShardWriter:
    """Accumulates document tokens and writes a shard each time `tokens_per_shard` are buffered."""

    def __init__(self, directory: Path, split: str, tokens_per_shard: int):
        self.directory, self.split, self.tokens_per_shard = directory, split, tokens_per_shard
        self.buffer = np.empty(tokens_per_shard, dtype=np.uint16)
        self.fill, self.names, self.num_tokens, self.num_docs = 0, [], 0, 0

    def add(self, doc_tokens: np.ndarray) -> None:
        self.num_docs += 1
        self.num_tokens += doc_tokens.size
        while doc_tokens.size:  # a document continues in the next shard when this one fills up
            take = min(doc_tokens.size, self.tokens_per_shard - self.fill)
            self.buffer[self.fill:self.fill + take] = doc_tokens[:take]
            self.fill += take
            doc_tokens = doc_tokens[take:]
            if self.fill == self.tokens_per_shard:
                self.flush()

    def flush(self) -> None:
        if self.fill:
            name = f"fineweb_{self.split}_{len(self.names):06d}.bin"
            write_shard(self.directory / name, self.buffer[:self.fill])
            self.names.append(name)
            self.fill = 0

    def summary(self) -> dict:
        return {"num_docs": self.num_docs, "num_tokens": self.num_tokens, "shards": self.names}


def _encode_split(sp: spm.SentencePieceProcessor, texts: list[str], writer: _ShardWriter, desc: str) -> None:
    with tqdm(total=len(texts), desc=desc, unit="doc", mininterval=2.0) as bar:
        for start in range(0, len(texts), ENCODE_BATCH_DOCS):
            batch = texts[start:start + ENCODE_BATCH_DOCS]
            for ids in sp.encode(batch, out_type=int):
                writer.add(np.asarray([BOS_ID] + ids, dtype=np.uint16))
            bar.update(len(batch))
    writer.flush()


def build_shards(docs_jsonl: str | os.PathLike, num_val_docs: int, tokenizer_model: str | os.PathLike,
                 tokens_per_shard: int, out_train_dir: str | os.PathLike, out_val_dir: str | os.PathLike,
                 out_manifest: str | os.PathLike) -> dict:
    """The shards stage: tokenize validation and train documents into challenge-format shards plus a manifest."""
    if tokens_per_shard < 1:
        raise ValueError(f"shards.tokens_per_shard: must be positive, got {tokens_per_shard}")
    sp = check_tokenizer(tokenizer_model)
    val, train = load_split(docs_jsonl, num_val_docs)
    splits = {}
    for split, texts, out_dir in (("val", val, out_val_dir), ("train", train, out_train_dir)):
        with atomic_dir(out_dir) as tmp:
            writer = _ShardWriter(tmp, split, tokens_per_shard)
            _encode_split(sp, texts, writer, desc=f"shards {split}")
        splits[split] = writer.summary()
        log.info("%s: %d docs, %d tokens, %d shards", split, writer.num_docs, writer.num_tokens, len(writer.names))
    manifest = {"tokens_per_shard": tokens_per_shard, "vocab_size": sp.vocab_size(), "splits": splits,
                "tokenizer_sha256": sha256_file(tokenizer_model)}
    write_json(out_manifest, manifest)
    return manifest
