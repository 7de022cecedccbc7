"""The published, pre-tokenized challenge shards (e.g. HF `kevclark/parameter-golf`,
`datasets/fineweb10B_sp8192/`), for leaderboard-comparable numbers without re-tokenizing 15M docs.

Each downloaded shard is checked with pgolf.shard_format.read_shard (magic, version, size) and against the
tokenizer's vocabulary before it is placed in the stage's train/ or val/ directory.
"""
from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import numpy as np
from tqdm import tqdm

from pgolf.hub import download_dataset_file
from pgolf.io import atomic_dir, sha256_file, write_json
from pgolf.shard_format import read_shard
from pgolf.tokenizer import check_tokenizer

log = logging.getLogger(__name__)


def published_names(cfg: dict, split: str) -> list[str]:
    """Repo paths of the first `hf_<split>_shards` shards of a split, in the official naming."""
    count = int(cfg[f"hf_{split}_shards"])
    return [f"{cfg['hf_dir']}/fineweb_{split}_{i:06d}.bin" for i in range(count)]


def _place_split(cfg: dict, split: str, vocab_size: int, out_dir: str | os.PathLike) -> dict:
    num_tokens, shards = 0, []
    with atomic_dir(out_dir) as tmp:
        for name in tqdm(published_names(cfg, split), desc=f"{split} shards", unit="shard"):
            local = download_dataset_file(cfg["hf_repo"], name, cfg.get("hf_revision"))
            tokens = read_shard(local)
            if tokens.size and int(np.max(tokens)) >= vocab_size:
                raise ValueError(f"{local}: token id {int(np.max(tokens))} >= the tokenizer's vocab size {vocab_size}")
            shutil.copyfile(local, tmp / Path(name).name)
            num_tokens += int(tokens.size)
            shards.append(Path(name).name)
    return {"num_tokens": num_tokens, "shards": shards}


def fetch_published_shards(cfg: dict, tokenizer_model: str | os.PathLike, out_train_dir, out_val_dir,
                           out_manifest) -> dict:
    """The shards stage for `shards.source: hf`; `cfg` is the `shards:` section."""
    vocab_size = check_tokenizer(tokenizer_model).vocab_size()
    splits = {split: _place_split(cfg, split, vocab_size, out)
              for split, out in (("val", out_val_dir), ("train", out_train_dir))}
    manifest = {"source": f"hf:{cfg['hf_repo']}/{cfg['hf_dir']}", "revision": cfg.get("hf_revision"),
                "vocab_size": vocab_size, "tokenizer_sha256": sha256_file(tokenizer_model), "splits": splits}
    write_json(out_manifest, manifest)
    log.info("published shards: %s", {s: v["num_tokens"] for s, v in splits.items()})
    return manifest
