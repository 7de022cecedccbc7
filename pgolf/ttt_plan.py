"""Which tokens belong to which validation document, and in which order test-time training processes them.

A validation stream is a run of documents, each `[BOS] + tokens` (DESIGN.md §1). Document i owns the targets
from its first real token up to and including the next document's BOS (predicting where a document ends is
part of the score; that BOS target counts 0 bytes), so the documents' targets partition the stream's targets:
every token is scored exactly once and the byte total is the canonical one.

Processing order: `length` (the 1.0611 record's) takes every document longest first and cuts phases after
`phase_docs` documents of that order, so the global phases train on the longest documents; `file` cuts
phases in file order (the chunked score-first form of earlier records). Within a phase documents go
longest first either way (batches of similar lengths waste little padding). A document's processing
position is its index in that order. Ranks take every world_size-th document of each phase, so a phase's
documents are scored in parallel with the base weights the earlier phases left.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Doc:
    index: int        # position in the validation file (file order)
    start: int        # stream offset of its BOS: inputs are stream[start : start + num_targets]
    num_targets: int  # targets stream[start + 1 : start + 1 + num_targets]


def split_documents(tokens: np.ndarray, bos_id: int, where: str = "validation stream") -> list[Doc]:
    """The documents of a stream that starts with BOS; the last one ends at the stream's last token."""
    if tokens.size < 2:
        raise ValueError(f"{where}: needs at least 2 tokens, got {tokens.size}")
    if int(tokens[0]) != bos_id:
        raise ValueError(f"{where}: does not start with BOS (id {bos_id}); per-document evaluation needs "
                         f"shards whose documents each begin with BOS (rebuild them with the shards stage)")
    starts = np.flatnonzero(tokens == bos_id)
    ends = np.append(starts[1:], tokens.size - 1)  # a document's last target is the next BOS
    return [Doc(i, int(s), int(e - s)) for i, (s, e) in enumerate(zip(starts, ends)) if e > s]


def phase_bounds(num_docs: int, phase_docs: list[int]) -> list[tuple[int, int]]:
    """[first, last) processing-order ranges of the phases; phase_docs are cumulative document counts."""
    cuts = sorted({int(p) for p in phase_docs if 0 < int(p) < num_docs})
    edges = [0, *cuts, num_docs]
    return list(zip(edges[:-1], edges[1:]))


def processing_order(docs: list[Doc], phase_docs: list[int], order: str = "length") -> list[list[Doc]]:
    """Phases in order, each its documents longest first (ties: file order); `order` says whether the
    phases are cut from the documents longest first (`length`) or in file order (`file`)."""
    if order not in ("length", "file"):
        raise ValueError(f"eval.ttt_phase_order must be length or file, got {order!r}")
    longest_first = lambda some: sorted(some, key=lambda d: (-d.num_targets, d.index))  # noqa: E731
    cut_from = longest_first(docs) if order == "length" else docs
    return [longest_first(cut_from[a:b]) for a, b in phase_bounds(len(docs), phase_docs)]


def global_step_docs(phases: list[list[Doc]], k: int, on: str) -> list[Doc]:
    """The documents the global steps after phase k train on: every document scored so far (`scored`, the
    1.0611 record's) or phase k's alone (`phase`)."""
    return [d for done in phases[:k + 1] for d in done] if on == "scored" else phases[k]


def rank_share(phase: list[Doc], rank: int, world_size: int) -> list[Doc]:
    """This rank's documents of a phase: every world_size-th, so lengths stay balanced across ranks."""
    return phase[rank::world_size]


def batches(docs: list[Doc], batch_docs: int) -> list[list[Doc]]:
    return [docs[i:i + batch_docs] for i in range(0, len(docs), batch_docs)]


def chunk_passes(docs: list[Doc], phase_docs: list[int], order: str, batch_docs: int, chunk_tokens: int,
                 world_size: int) -> int:
    """Chunk passes of the busiest rank: each batch of its documents runs one pass (a forward and, with
    adapters, a backward) per `chunk_tokens` of its longest document. TTT's scoring time grows with this
    count: a pass is small, so its launch latency weighs as much as its FLOPs (bench/time_eval.py projects by both)."""
    phases = processing_order(docs, phase_docs, order)
    return max(sum(-(-batch[0].num_targets // chunk_tokens)
                   for phase in phases for batch in batches(rank_share(phase, rank, world_size), batch_docs))
               for rank in range(world_size))
