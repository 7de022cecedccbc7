"""Training batches: one token stream through the train shards, each global batch split across ranks.

Every optimizer step takes the next `batch_tokens + 1` tokens of the stream (shards in name order,
wrapping around at the end). Rank r gets the r-th contiguous slice of `batch_tokens / world_size`
tokens plus one more for the shifted targets, reshaped to sequences of `seq_len`. Ranks therefore see
disjoint data, and together exactly the tokens a single process would see.

On CUDA the slice goes through one of two pinned int32 staging buffers and is copied asynchronously
(the host never waits for the GPU, and the GPU never waits for a pageable copy); an event per buffer
keeps the host from overwriting a buffer whose copy is still in flight.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pgolf.shards import read_shard, shard_paths


class TokenStream:
    """Endless stream of tokens over a list of shards; holds one shard in memory at a time."""

    def __init__(self, paths: list[Path], vocab_size: int):
        if not paths:
            raise FileNotFoundError("no train shards to read")
        self.paths, self.vocab_size = list(paths), vocab_size
        self.shard_index, self.pos = -1, 0
        self.tokens = np.empty(0, dtype=np.uint16)
        self._next_shard()

    def _next_shard(self) -> None:
        self.shard_index = (self.shard_index + 1) % len(self.paths)
        path = self.paths[self.shard_index]
        self.tokens, self.pos = np.asarray(read_shard(path)), 0
        if self.tokens.size and int(self.tokens.max()) >= self.vocab_size:
            raise ValueError(f"{path}: token id {int(self.tokens.max())} >= tokenizer vocab_size {self.vocab_size}")

    def take(self, n: int) -> np.ndarray:
        parts, needed = [], n
        while needed:
            if self.pos >= self.tokens.size:
                self._next_shard()
                continue
            chunk = self.tokens[self.pos:self.pos + needed]
            parts.append(chunk)
            self.pos += chunk.size
            needed -= chunk.size
        return np.concatenate(parts)


class DistributedTokenLoader:
    """Yields (inputs, targets) int64 tensors of shape [local_seqs, seq_len] for this rank."""

    def __init__(self, train_dir, vocab_size: int, seq_len: int, batch_tokens: int,
                 rank: int = 0, world_size: int = 1, device: str | torch.device = "cpu"):
        if batch_tokens % (world_size * seq_len):
            raise ValueError(f"train.batch_tokens={batch_tokens} must be a multiple of "
                             f"world_size * seq_len = {world_size} * {seq_len}")
        self.stream = TokenStream(shard_paths(train_dir), vocab_size)
        self.seq_len, self.batch_tokens = seq_len, batch_tokens
        self.rank, self.local_tokens = rank, batch_tokens // world_size
        self.device = torch.device(device)
        self._pinned, self._copied, self._turn = [], [], 0
        if self.device.type == "cuda":
            self._pinned = [torch.empty(self.local_tokens + 1, dtype=torch.int32).pin_memory() for _ in range(2)]
            self._copied = [None, None]

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        span = self.stream.take(self.batch_tokens + 1)  # +1: the last rank's final target
        start = self.rank * self.local_tokens
        window = span[start:start + self.local_tokens + 1]
        if self._pinned:
            i, self._turn = self._turn, self._turn ^ 1
            if self._copied[i] is not None:
                self._copied[i].synchronize()  # the copy out of this buffer two batches ago is done
            self._pinned[i].numpy()[:] = window
            local = self._pinned[i].to(self.device, non_blocking=True)
            self._copied[i] = torch.cuda.Event()
            self._copied[i].record()
            local = local.long()
        else:
            local = torch.from_numpy(window.astype(np.int64))
        inputs = local[:-1].view(-1, self.seq_len)
        targets = local[1:].view(-1, self.seq_len)
        return inputs, targets
