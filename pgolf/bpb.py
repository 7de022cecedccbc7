"""Bits per byte, with the challenge's canonical byte rule (DESIGN.md §2).

The score divides the summed NLL by the UTF-8 byte count of the scored text. Bytes are counted per target token from
three lookup tables over the vocabulary, so that the count can run on the GPU beside the loss:

    bytes(t after p) = base_bytes[t] + (has_leading_space[t] and not is_boundary[p])

`base_bytes` is the UTF-8 length of the piece without its leading "▁" (any further "▁" decode to one-byte spaces),
a byte-fallback piece <0xNN> is 1 byte, and control / unknown / unused pieces (BOS among them) are 0 bytes and
boundaries: SentencePiece drops the leading space of a document's first piece when it decodes. With this rule the
byte total of a split equals the UTF-8 length of each document's decoded tokens, exactly (tests/test_bpb.py).
"""
from __future__ import annotations

import math
import os

import numpy as np
import sentencepiece as spm

SPACE_PIECE = "\u2581"


def byte_luts(sp_or_model_path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(base_bytes int16[V], has_leading_space bool[V], is_boundary bool[V]) for a SentencePiece model."""
    sp = sp_or_model_path
    if isinstance(sp, (str, os.PathLike)):
        sp = spm.SentencePieceProcessor(model_file=str(sp))
    vocab_size = sp.vocab_size()
    base_bytes = np.zeros(vocab_size, dtype=np.int16)
    has_leading_space = np.zeros(vocab_size, dtype=np.bool_)
    is_boundary = np.zeros(vocab_size, dtype=np.bool_)
    for token_id in range(vocab_size):
        if sp.is_control(token_id) or sp.is_unknown(token_id) or sp.is_unused(token_id):
            is_boundary[token_id] = True  # decodes to nothing, and the next piece's leading space is dropped
            continue
        if sp.is_byte(token_id):
            base_bytes[token_id] = 1  # <0xNN> is one raw byte of a multi-byte character, not its 6-char name
            continue
        piece = sp.id_to_piece(token_id)
        if piece.startswith(SPACE_PIECE):
            has_leading_space[token_id] = True
            piece = piece[1:]
        base_bytes[token_id] = len(piece.replace(SPACE_PIECE, " ").encode("utf-8"))
    return base_bytes, has_leading_space, is_boundary


def target_bytes(prev_ids, target_ids, luts):
    """Bytes of each target token given its predecessor; numpy in, numpy out; torch in, torch out (same device)."""
    base_bytes, has_leading_space, is_boundary = luts
    if isinstance(target_ids, np.ndarray):
        prev_ids, target_ids = np.asarray(prev_ids, dtype=np.int64), target_ids.astype(np.int64)
        return base_bytes[target_ids].astype(np.int64) + (has_leading_space[target_ids] & ~is_boundary[prev_ids])
    import torch  # only the eval path needs torch

    device = target_ids.device
    base, space, boundary = (torch.as_tensor(lut, device=device) for lut in luts)
    prev, target = prev_ids.long(), target_ids.long()
    return base[target].long() + (space[target] & ~boundary[prev]).long()


def count_doc_bytes(token_ids_with_bos, luts) -> int:
    """Bytes of one document or stream whose first token is BOS (which itself counts 0)."""
    ids = np.asarray(token_ids_with_bos, dtype=np.int64)
    return int(target_bytes(ids[:-1], ids[1:], luts).sum()) if ids.size > 1 else 0


def bits_per_byte(nll_nats_sum: float, num_bytes: int) -> float:
    """Summed NLL in nats over the scored tokens → bits per UTF-8 byte of the text they encode."""
    if num_bytes <= 0:
        raise ValueError(f"bits_per_byte: num_bytes must be positive, got {num_bytes}")
    return float(nll_nats_sum) / math.log(2) / num_bytes
