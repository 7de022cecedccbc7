"""Training batches for every rank, in one of two orders (train.data_order).

shuffled (the record's order, the default): each epoch cuts every shard into non-overlapping windows of
`seq_len + 1` tokens, starting at a random phase below seq_len, and visits all windows of all shards in
one random permutation drawn from the run's seed. Every rank draws the same permutation, each step takes
the next `batch_tokens / seq_len` windows, and rank r keeps the r-th contiguous part of them.

stream: one token stream through the shards in name order, wrapping around; every step takes the next
`batch_tokens + 1` tokens and rank r gets the r-th contiguous slice plus one token for the targets.
Kept for reproducing older runs, and because a stream over ordered data (one source after another)
biases the end of training, which the warmdown and EMA weigh most.

Either way ranks see disjoint data, together exactly the windows a single process would see. On CUDA
the local batch goes through one of two pinned int32 staging buffers and is copied asynchronously (the
host never waits for the GPU, and the GPU never waits for a pageable copy); an event per buffer keeps
the host from overwriting a buffer whose copy is still in flight.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pgolf.consistency import batch_split_errors
from pgolf.shard_format import read_shard, shard_paths


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
        self.tokens, self.pos = read_shard(self.paths[self.shard_index]), 0

    def take(self, n: int) -> np.ndarray:
        parts, needed = [], n
        while needed:
            if self.pos >= self.tokens.size:
                self._next_shard()
                continue
            chunk = self.tokens[self.pos:self.pos + needed]
            _check_vocab(chunk, self.vocab_size, self.paths[self.shard_index])
            parts.append(chunk)
            self.pos += chunk.size
            needed -= chunk.size
        return np.concatenate(parts)


def _check_vocab(tokens: np.ndarray, vocab_size: int, where) -> None:
    # Only the tokens a batch takes are checked (a max over ~1 MB per step): a scan of whole shards
    # would land on the training clock, in the first steps, for every shard the permutation touches.
    if tokens.size and int(tokens.max()) >= vocab_size:
        raise ValueError(f"{where}: token id {int(tokens.max())} >= tokenizer vocab_size {vocab_size}")


class ShuffledWindows:
    """Endless supply of (seq_len + 1)-token windows of the shards, in a new random order each epoch."""

    def __init__(self, paths: list[Path], vocab_size: int, seq_len: int, seed: int):
        if not paths:
            raise FileNotFoundError("no train shards to read")
        self.paths, self.vocab_size, self.seq_len = list(paths), vocab_size, seq_len
        self.shards = [read_shard(p) for p in self.paths]  # memmaps: only the windows taken are read
        if not any(t.size > seq_len for t in self.shards):
            raise ValueError(f"train shards in {self.paths[0].parent} hold no window of seq_len + 1 = {seq_len + 1} "
                             f"tokens: lower train.seq_len or add data")
        self.rng = np.random.default_rng(seed)
        self._new_epoch()

    def _new_epoch(self) -> None:
        sizes = np.array([t.size for t in self.shards], dtype=np.int64)
        # A random phase moves the window boundaries between epochs; short shards start at 0.
        room = np.clip(sizes - self.seq_len - 1, 0, self.seq_len - 1)
        self.phase = np.array([self.rng.integers(r + 1) for r in room], dtype=np.int64)
        counts = np.maximum(sizes - 1 - self.phase, 0) // self.seq_len
        self.first_window = np.concatenate([[0], np.cumsum(counts)])
        self.order, self.pos = self.rng.permutation(int(self.first_window[-1])), 0

    def _chunks(self, n: int):
        """The next n window indices of the permutation, one chunk per epoch touched. A chunk must be used
        before the next is drawn: drawing past an epoch's end starts a new one (new phases and boundaries)."""
        while n:
            if self.pos == self.order.size:
                self._new_epoch()
            step = min(n, self.order.size - self.pos)
            yield self.order[self.pos:self.pos + step]
            self.pos, n = self.pos + step, n - step

    def take(self, n: int) -> np.ndarray:
        """The next n windows of the permutation as an [n, seq_len + 1] uint16 array."""
        out, row_shard, row = np.empty((n, self.seq_len + 1), dtype=np.uint16), np.empty(n, dtype=np.int64), 0
        for g in self._chunks(n):
            shard = np.searchsorted(self.first_window, g, side="right") - 1
            starts = self.phase[shard] + (g - self.first_window[shard]) * self.seq_len
            row_shard[row:row + g.size] = shard
            for si, start in zip(shard.tolist(), starts.tolist()):
                out[row] = self.shards[si][start:start + self.seq_len + 1]
                row += 1
        if n and int(out.max()) >= self.vocab_size:
            bad = int(np.argmax(out.max(axis=1) >= self.vocab_size))
            _check_vocab(out[bad], self.vocab_size, self.paths[row_shard[bad]])
        return out

    def skip(self, n: int) -> None:
        """Advance past n windows without reading them (the other ranks' part of a step)."""
        for _ in self._chunks(n):
            pass


DATA_ORDERS = ("shuffled", "stream")


class DistributedTokenLoader:
    """Yields (inputs, targets) int64 tensors of shape [local_seqs, seq_len] for this rank."""

    def __init__(self, train_dir, vocab_size: int, seq_len: int, batch_tokens: int,
                 rank: int = 0, world_size: int = 1, device: str | torch.device = "cpu",
                 order: str = "shuffled", seed: int = 0):
        errors = batch_split_errors(batch_tokens, seq_len, world_size, grad_accum_steps=1)
        if errors:
            raise ValueError(errors[0])
        if order not in DATA_ORDERS:
            raise ValueError(f"train.data_order must be one of {DATA_ORDERS}, got {order!r}")
        paths = shard_paths(train_dir)
        self.order, self.seq_len, self.batch_tokens = order, seq_len, batch_tokens
        self.rank, self.world_size, self.local_tokens = rank, world_size, batch_tokens // world_size
        self.local_seqs = self.local_tokens // seq_len
        if order == "stream":
            self.stream = TokenStream(paths, vocab_size)
            staged_tokens = self.local_tokens + 1
        else:
            self.windows = ShuffledWindows(paths, vocab_size, seq_len, seed)
            staged_tokens = self.local_seqs * (seq_len + 1)
        self.device = torch.device(device)
        self._pinned, self._copied, self._turn = [], [], 0
        if self.device.type == "cuda":
            self._pinned = [torch.empty(staged_tokens, dtype=torch.int32).pin_memory() for _ in range(2)]
            self._copied = [None, None]

    def _local_tokens(self) -> np.ndarray:
        """This rank's part of the next global batch, flat (stream) or one window per row (shuffled)."""
        if self.order == "stream":
            span = self.stream.take(self.batch_tokens + 1)  # +1: the last rank's final target
            start = self.rank * self.local_tokens
            return span[start:start + self.local_tokens + 1]
        self.windows.skip(self.rank * self.local_seqs)
        rows = self.windows.take(self.local_seqs)
        self.windows.skip((self.world_size - 1 - self.rank) * self.local_seqs)
        return rows

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        window = self._local_tokens()
        if self._pinned:
            i, self._turn = self._turn, self._turn ^ 1
            if self._copied[i] is not None:
                self._copied[i].synchronize()  # the copy out of this buffer two batches ago is done
            self._pinned[i].numpy()[:] = window.reshape(-1)
            local = self._pinned[i].to(self.device, non_blocking=True)
            self._copied[i] = torch.cuda.Event()
            self._copied[i].record()
            local = local.long()
        else:
            local = torch.from_numpy(window.astype(np.int64)).reshape(-1)
        if self.order == "stream":
            return local[:-1].view(-1, self.seq_len), local[1:].view(-1, self.seq_len)
        rows = local.view(self.local_seqs, self.seq_len + 1)
        return rows[:, :-1].contiguous(), rows[:, 1:].contiguous()  # the model flattens them with view()
