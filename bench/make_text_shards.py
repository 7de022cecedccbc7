#!/usr/bin/env python3
"""Real-text sp8192 shards for the quality comparison of pgolf against the record's script.

    python3 bench/make_text_shards.py --samples DIR [--tokenizer fineweb_8192_bpe.model] [--out .ref/data_text]

Validation: fineweb_pg_docs_selected_sample200.jsonl (200 documents of the challenge's own pool).
Training: every other JSONL file in --samples (FineWeb, FineWeb-Edu, C4, Dolma CC samples), so no
validation document is trained on. Both go through pgolf's own shards stage (BOS before each
document, challenge shard format), with the published sp8192 tokenizer. The validation shard is cut
to k·2048 + 1 tokens: the record keeps exactly that many, so both sides score the same targets.

Writes OUT/datasets/fineweb10B_sp8192/fineweb_{train,val}_*.bin and OUT/tokenizers/fineweb_8192_bpe.model,
the layout the record reads with DATA_DIR=OUT/ (≈ 13 MB, under the git-ignored .ref/ by default).
"""
import argparse
import shutil
import tempfile
from pathlib import Path

from pgolf.docs import docs_jsonl_bytes, read_jsonl_texts
from pgolf.shard_format import read_shard, shard_paths, write_shard
from pgolf.shards import build_shards

ROOT = Path(__file__).resolve().parents[1]

VAL_FILE = "fineweb_pg_docs_selected_sample200.jsonl"
SEQ_LEN = 2048


def select_texts(samples: Path) -> tuple[list[str], list[str], list[Path]]:
    """Validation texts, training texts (in file order) and the training files of a samples folder."""
    val_texts = read_jsonl_texts(samples / VAL_FILE)
    train_files = sorted(p for p in samples.glob("*.jsonl") if p.name != VAL_FILE)
    train_texts = [t for p in train_files for t in read_jsonl_texts(p)]
    leaked = set(val_texts) & set(train_texts)
    if leaked:
        raise SystemExit(f"{len(leaked)} validation documents also appear in the training files")
    return val_texts, train_texts, train_files


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", required=True, help=f"folder of JSONL samples with a `text` field, {VAL_FILE} among them")
    ap.add_argument("--out", default=str(ROOT / ".ref" / "data_text"))
    ap.add_argument("--tokenizer", default=None, help="the published sp8192 model (default: SAMPLES/fineweb_8192_bpe.model)")
    a = ap.parse_args()
    samples, out = Path(a.samples), Path(a.out)
    tokenizer = Path(a.tokenizer or samples / "fineweb_8192_bpe.model")
    val_texts, train_texts, train_files = select_texts(samples)
    data = out / "datasets" / "fineweb10B_sp8192"
    with tempfile.TemporaryDirectory() as tmp:
        docs = Path(tmp) / "docs.jsonl"  # pgolf's docs layout: the validation documents first
        docs.write_bytes(docs_jsonl_bytes(val_texts + train_texts))
        manifest = build_shards(docs, len(val_texts), tokenizer, 100_000_000, Path(tmp) / "train", Path(tmp) / "val",
                                Path(tmp) / "manifest.json")
        if data.exists():
            shutil.rmtree(data)
        data.mkdir(parents=True)
        for split in ("train", "val"):
            for p in shard_paths(Path(tmp) / split):
                shutil.copy(p, data / p.name)
    (val_path,) = sorted(data.glob("fineweb_val_*.bin"))
    val = read_shard(val_path)
    keep = (len(val) - 1) // SEQ_LEN * SEQ_LEN + 1
    write_shard(val_path, val[:keep])
    (out / "tokenizers").mkdir(parents=True, exist_ok=True)
    shutil.copy(tokenizer, out / "tokenizers" / "fineweb_8192_bpe.model")
    train_tokens = manifest["splits"]["train"]["num_tokens"]
    print(f"{data}: train {train_tokens:,} tokens from {len(train_texts):,} docs ({len(train_files)} files); "
          f"val {keep:,} tokens from {len(val_texts)} docs (cut from {len(val):,})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
