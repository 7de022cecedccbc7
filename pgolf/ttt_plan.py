"""Which tokens belong to which validation document, and in which order test-time training processes them.

A validation stream is a run of documents, each `[BOS] + tokens` (DESIGN.md §1). Document i owns the targets
from its first real token up to and including the next document's BOS (predicting where a document ends is
part of the score; that BOS target counts 0 bytes), so the documents' targets partition the stream's targets:
every token is scored exactly once and the byte total is the canonical one.

Processing order: documents in file order are cut into phases at `phase_docs` (document counts); within a
phase they are sorted longest first (batches of similar lengths waste little padding). A document's
processing position is its index in that order. Ranks take every world_size-th document of each phase, so a
phase's documents are scored in parallel with the base weights the earlier phases left.
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
    """[first, last) file-order document ranges of the phases; phase_docs are cumulative document counts."""
    cuts = sorted({int(p) for p in phase_docs if 0 < int(p) < num_docs})
    edges = [0, *cuts, num_docs]
    return list(zip(edges[:-1], edges[1:]))


def processing_order(docs: list[Doc], phase_docs: list[int]) -> list[list[Doc]]:
    """Phases in order, each its documents longest first (ties: file order)."""
    return [sorted(docs[a:b], key=lambda d: (-d.num_targets, d.index)) for a, b in phase_bounds(len(docs), phase_docs)]


def rank_share(phase: list[Doc], rank: int, world_size: int) -> list[Doc]:
    """This rank's documents of a phase: every world_size-th, so lengths stay balanced across ranks."""
    return phase[rank::world_size]


def batches(docs: list[Doc], batch_docs: int) -> list[list[Doc]]:
    return [docs[i:i + batch_docs] for i in range(0, len(docs), batch_docs)]
