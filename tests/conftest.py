"""Shared fixtures: the real-data folder (or a clean skip) and a tiny end-to-end corpus built once per session."""
from __future__ import annotations

import types
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture
def one_torch_thread():
    """Tiny models on 2 shared cores run fastest, and most repeatably, on one torch thread."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """/work/shared/data (real FineWeb samples and official tokenizers), located relative to the repo."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} not present")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> types.SimpleNamespace:
    """Synthetic docs (300, the first 30 validation) → trained tokenizer (vocab 512) → shards of 10,000 tokens.

    Stable API: docs_jsonl, docs_meta, tokenizer_model, tokenizer_meta, train_dir, val_dir, manifest (all Paths),
    num_val_docs, vocab_size, tokens_per_shard (ints).
    """
    from pgolf.docs import build_docs
    from pgolf.shards import build_shards
    from pgolf.tokenizer import build_tokenizer

    root = tmp_path_factory.mktemp("tiny_corpus")
    c = types.SimpleNamespace(docs_jsonl=root / "docs.jsonl", docs_meta=root / "docs.json",
                              tokenizer_model=root / "tokenizer.model", tokenizer_meta=root / "tokenizer.json",
                              train_dir=root / "train", val_dir=root / "val", manifest=root / "manifest.json",
                              num_val_docs=30, vocab_size=512, tokens_per_shard=10_000)
    build_docs({"source": "synthetic", "num_docs": 300, "num_val_docs": c.num_val_docs, "seed": 1337},
               c.docs_jsonl, c.docs_meta)
    build_tokenizer({"vocab_size": c.vocab_size, "model": None, "train_on_val": False, "max_train_docs": None},
                    c.docs_jsonl, c.num_val_docs, c.tokenizer_model, c.tokenizer_meta)
    build_shards(c.docs_jsonl, c.num_val_docs, c.tokenizer_model, c.tokens_per_shard, c.train_dir, c.val_dir, c.manifest)
    return c


@pytest.fixture(scope="session")
def eval_defaults() -> dict:
    """The `eval:` section as config/schema.yaml's defaults fill it in."""
    import yaml

    schema = yaml.safe_load((Path(__file__).parents[1] / "config" / "schema.yaml").read_text())
    return {key: spec["default"] for key, spec in schema["properties"]["eval"]["properties"].items()}
