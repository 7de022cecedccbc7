#!/usr/bin/env python3
"""CaseOps shards for the 1.0611 record's script, from the same documents as bench/make_text_shards.py.

    python3 bench/make_caseops_shards.py --samples DIR [--ref .ref0611] [--out REF/data_caseops]

Documents: make_text_shards.select_texts, so the same 200 validation documents and the same training
documents (file order) as pgolf's side. Each goes through the record's own lossless_caps transform
(encode_lossless_caps_v2, its caseops_v1) and its CaseOps tokenizer, with BOS before each document, as
the record's prepare_caseops_data.py does. Beside the validation shard, a byte sidecar
(fineweb_val_bytes_000000.bin, same shard format): each token's bytes of the ORIGINAL text, BOS and
case operators 0, which the record divides its loss by. Its total must equal the validation documents'
UTF-8 bytes exactly; the build fails otherwise. The validation stream is not cut here: the record keeps
k·2048 + 1 tokens itself and slices the sidecar to match.

Needs REF (bench/prepare_reference.sh with REF_RECORD=1.0611) for lossless_caps.py and the tokenizer.
Writes OUT/datasets/fineweb10B_sp8192_lossless_caps_caseops_v1_reserved/fineweb_{train,val,val_bytes}_*.bin
and OUT/tokenizers/<model> (the script reads them through DATA_PATH and TOKENIZER_PATH), replacing OUT whole.
"""
import argparse
import importlib.util
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import sentencepiece as spm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_text_shards import select_texts  # noqa: E402  (bench/ is not a package)

from pgolf.shard_format import write_shard  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODEL = "fineweb_8192_bpe_lossless_caps_caseops_v1_reserved.model"
DATASET = "fineweb10B_sp8192_lossless_caps_caseops_v1_reserved"
BOS_ID = 1
SHARD_TOKENS = 10_000_000  # as the record's prepare_caseops_data.py


def load_lossless_caps(ref: Path):
    """The record's lossless_caps.py, imported from REF (never from this repository)."""
    path = ref / "lossless_caps.py"
    if not path.is_file():
        raise SystemExit(f"{path} not found: run REF_RECORD=1.0611 REF_MIRROR=... bash bench/prepare_reference.sh first")
    spec = importlib.util.spec_from_file_location("lossless_caps", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def encode_doc(sp, caps, text: str) -> tuple[np.ndarray, np.ndarray]:
    """[BOS] + CaseOps tokens of one document, and each token's bytes of the original text (BOS: 0).

    The record calls encode_as_immutable_proto (older sentencepiece); encode_as_proto gives the same
    pieces and surfaces.
    """
    pieces = sp.encode_as_proto(caps.encode_lossless_caps_v2(text)).pieces
    counts = caps.surface_piece_original_byte_counts((p.surface for p in pieces),
                                                     text_transform_name=caps.LOSSLESS_CAPS_CASEOPS_V1)
    if len(counts) != len(pieces):
        raise ValueError(f"{len(counts)} byte counts for {len(pieces)} tokens")
    return (np.array([BOS_ID] + [p.id for p in pieces], dtype=np.int64),
            np.array([0] + list(counts), dtype=np.int64))


def encode_docs(sp, caps, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The concatenated token stream of `texts` and its byte sidecar."""
    pairs = [encode_doc(sp, caps, t) for t in texts]
    return np.concatenate([p[0] for p in pairs]), np.concatenate([p[1] for p in pairs])


def write_stream(folder: Path, prefix: str, values: np.ndarray) -> None:
    for i, start in enumerate(range(0, len(values), SHARD_TOKENS)):
        write_shard(folder / f"{prefix}_{i:06d}.bin", values[start:start + SHARD_TOKENS])


def write_layout(root: Path, tokenizer: Path, val_tokens, val_bytes, train_tokens) -> None:
    """The folders the record reads: datasets/DATASET/*.bin and tokenizers/MODEL."""
    data = root / "datasets" / DATASET
    data.mkdir(parents=True)
    write_stream(data, "fineweb_val", val_tokens)
    write_stream(data, "fineweb_val_bytes", val_bytes)
    write_stream(data, "fineweb_train", train_tokens)
    (root / "tokenizers").mkdir()
    shutil.copy(tokenizer, root / "tokenizers" / MODEL)


def build(samples: Path, ref: Path, out: Path) -> dict:
    """Write OUT (through a temporary sibling, renamed at the end); returns what was written."""
    caps = load_lossless_caps(ref)
    tokenizer = ref / "data" / "tokenizers" / MODEL
    sp = spm.SentencePieceProcessor(model_file=str(tokenizer))
    val_texts, train_texts, train_files = select_texts(samples)
    val_tokens, val_bytes = encode_docs(sp, caps, val_texts)
    raw_bytes = sum(len(t.encode("utf-8")) for t in val_texts)
    if int(val_bytes.sum()) != raw_bytes:
        raise SystemExit(f"byte sidecar sums to {int(val_bytes.sum()):,}, the validation documents hold {raw_bytes:,} "
                         "UTF-8 bytes: lossless_caps.py or the tokenizer in REF is not the record's")
    train_tokens, _ = encode_docs(sp, caps, train_texts)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        write_layout(tmp, tokenizer, val_tokens, val_bytes, train_tokens)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return {"val_docs": len(val_texts), "val_tokens": len(val_tokens), "val_bytes": raw_bytes,
            "train_docs": len(train_texts), "train_files": len(train_files), "train_tokens": len(train_tokens)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", required=True, help="folder of JSONL samples, as for make_text_shards.py")
    ap.add_argument("--ref", default=str(ROOT / ".ref0611"), help="the 1.0611 record's folder from prepare_reference.sh")
    ap.add_argument("--out", default=None, help="default: REF/data_caseops")
    a = ap.parse_args()
    out = Path(a.out or Path(a.ref) / "data_caseops")
    s = build(Path(a.samples), Path(a.ref), out)
    print(f"{out}: train {s['train_tokens']:,} tokens from {s['train_docs']:,} docs ({s['train_files']} files); "
          f"val {s['val_tokens']:,} tokens from {s['val_docs']} docs, byte sidecar = their {s['val_bytes']:,} UTF-8 bytes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
