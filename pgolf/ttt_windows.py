"""The windows a TTT chunk pass reads: index arithmetic on the device, with no host-to-device copy per chunk.

A batch's documents go longest first, so the documents still running at a chunk are a prefix of the batch;
each row's window is its document's last `context` tokens up to the chunk's end, right-padded to the longest
running window (pgolf.ttt scores and adapts on them).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from pgolf.ttt_plan import Doc


@dataclass(frozen=True)
class ChunkWindows:
    """One chunk of a batch: the [rows, width] right-padded windows the model reads, and per row the chunk's
    (at most `chunk`) scored targets: their window columns, previous tokens and ids, and which are real."""
    inputs: torch.Tensor   # [rows, width] token ids, 0 after a row's window
    cols: torch.Tensor     # [rows, chunk] window column of each scored target (clamped into the window)
    prev: torch.Tensor     # [rows, chunk] the token before each scored target (its input)
    targets: torch.Tensor  # [rows, chunk] scored target ids
    valid: torch.Tensor    # [rows, chunk] bool: a real target of this chunk (a row's last chunk may be short)


@dataclass(frozen=True)
class BatchSpans:
    """A batch's document starts and target counts on the device, made once per batch: each chunk's windows
    are then index arithmetic on the device, with no per-chunk host-to-device copy."""
    starts: torch.Tensor       # [docs] stream offset of each document's BOS
    num_targets: torch.Tensor  # [docs]
    longest: int               # the first document's target count (longest first)

    @classmethod
    def of(cls, batch: list[Doc], device) -> "BatchSpans":
        both = torch.tensor([[d.start for d in batch], [d.num_targets for d in batch]], device=device)
        return cls(both[0], both[1], batch[0].num_targets)


def chunk_windows(stream, spans: BatchSpans, rows: int, chunk: int, first_target: int, context: int) -> ChunkWindows:
    """The windows of the batch's first `rows` documents (those still running at this chunk, and a finished
    one beside a lone runner: running_rows), each its document's last `context` tokens up to the chunk's end,
    gathered from the stream in one indexing; a finished document's row has no valid target."""
    device = stream.device
    starts, ends = spans.starts[:rows], spans.num_targets[:rows].clamp(max=first_target + chunk)
    lows = (ends - context).clamp(min=0)
    width = min(first_target + chunk, spans.longest, context)  # the longest running window: row 0's
    col = torch.arange(width, device=device)
    in_window = col[None, :] < (ends - lows)[:, None]
    index = ((starts + lows)[:, None] + col[None, :]).clamp(max=stream.numel() - 1)
    inputs = torch.where(in_window, stream[index], 0)
    step = torch.arange(chunk, device=device)
    valid = step[None, :] < (ends - first_target)[:, None]
    cols = ((first_target - lows)[:, None] + step[None, :]).clamp(max=width - 1)
    position = (starts[:, None] + first_target + step[None, :]).clamp(max=stream.numel() - 2)
    return ChunkWindows(inputs, cols, stream[position], stream[position + 1], valid)


def running_rows(batch: list[Doc], first_target: int) -> int:
    """Rows a chunk runs: the documents still running (a prefix, longest first), but two while the batch has
    two. A finished document's row scores nothing (no valid target) and steps nothing (no loss), and so one
    compiled graph serves every chunk: torch.compile specializes a size of 1 into a graph of its own."""
    return max(sum(d.num_targets > first_target for d in batch), min(2, len(batch)))
