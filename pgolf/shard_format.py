"""The challenge's binary token format, bit for bit: write, check and read shards.

A shard is a header of 256 little-endian int32 ([0] = magic 20240520, [1] = version 1, [2] = num_tokens, rest 0)
followed by num_tokens little-endian uint16 token ids, so its size is exactly 1024 + 2 * num_tokens bytes.
Kept apart from the shards stage (pgolf.shards) because training and evaluation read shards: this module is
packed into the artifact's code, and the tokenizer and document code the stage needs would only add bytes.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import numpy as np

from pgolf.io import atomic_path

MAGIC = 20240520
VERSION = 1
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4


def write_shard(path: str | os.PathLike, tokens) -> None:
    """Write one shard atomically; `tokens` must be ids in [0, 65535]."""
    tokens = np.asarray(tokens)
    if tokens.size and (tokens.min() < 0 or tokens.max() > np.iinfo(np.uint16).max):
        raise ValueError(f"{path}: token ids outside uint16 range")
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[:3] = (MAGIC, VERSION, tokens.size)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(header.tobytes())
            f.write(tokens.astype("<u2").tobytes())


def read_shard(path: str | os.PathLike) -> np.ndarray:
    """The tokens of one shard as a read-only uint16 memmap, after checking header and size."""
    path = Path(path)
    size_bytes = path.stat().st_size
    if size_bytes < HEADER_BYTES:
        raise ValueError(f"{path}: {size_bytes} bytes, shorter than the {HEADER_BYTES}-byte header")
    header = np.fromfile(path, dtype="<i4", count=HEADER_INTS)
    if header[0] != MAGIC:
        raise ValueError(f"{path}: bad magic {header[0]} (expected {MAGIC}): not a token shard")
    if header[1] != VERSION:
        raise ValueError(f"{path}: unsupported version {header[1]} (expected {VERSION})")
    num_tokens = int(header[2])
    if size_bytes != HEADER_BYTES + 2 * num_tokens:
        raise ValueError(f"{path}: {size_bytes} bytes, but the header's {num_tokens} tokens need "
                         f"{HEADER_BYTES + 2 * num_tokens} (truncated or corrupt)")
    if num_tokens == 0:
        return np.zeros(0, dtype=np.uint16)
    return np.memmap(path, dtype="<u2", mode="r", offset=HEADER_BYTES, shape=(num_tokens,))


def shard_paths(directory: str | os.PathLike) -> list[Path]:
    """The shards of a split directory, in order (names carry a zero-padded index)."""
    paths = sorted(Path(directory).glob("*.bin"))
    if not paths:
        raise FileNotFoundError(f"{directory}: no *.bin shards")
    return paths


def load_tokens(paths: Iterable[str | os.PathLike]) -> np.ndarray:
    """All tokens of the given shards, concatenated in order."""
    return np.concatenate([read_shard(p) for p in paths])
