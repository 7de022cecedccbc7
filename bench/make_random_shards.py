#!/usr/bin/env python3
"""Write challenge-format shards of uniformly random token ids (for speed benchmarks only).

Format (as in openai/parameter-golf): a header of 256 little-endian int32, [0]=20240520,
[1]=1 (version), [2]=number of tokens, the rest 0; then the tokens as little-endian uint16.
File size = 1024 + 2 * num_tokens.  Files are named as the record's loader globs them:
  <out>/fineweb_train_000000.bin ...  and  <out>/fineweb_val_000000.bin

Example (the record reads DATA_DIR/datasets/fineweb10B_sp8192/):
  python3 bench/make_random_shards.py --out .ref/data/datasets/fineweb10B_sp8192 \
      --train-tokens 20000000 --val-tokens 131073
"""
import argparse
import os

import numpy as np

MAGIC, VERSION, HEADER_INTS = 20240520, 1, 256


def write_shard(path: str, tokens: np.ndarray) -> None:
    if tokens.dtype != np.uint16:
        raise ValueError("tokens must be uint16")
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[0], header[1], header[2] = MAGIC, VERSION, tokens.size
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(header.tobytes())
        f.write(tokens.astype("<u2", copy=False).tobytes())
    os.replace(tmp, path)
    expected = HEADER_INTS * 4 + 2 * tokens.size
    if os.path.getsize(path) != expected:
        raise RuntimeError(f"{path}: size {os.path.getsize(path)} != {expected}")


def random_tokens(rng: np.random.Generator, n: int, vocab: int, low: int) -> np.ndarray:
    return rng.integers(low, vocab, size=n, dtype=np.uint16)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="folder to write the shards into (created)")
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--train-tokens", type=int, default=20_000_000, help="total train tokens")
    ap.add_argument("--train-shards", type=int, default=1, help="split the train tokens over this many files")
    ap.add_argument("--val-tokens", type=int, default=32 * 2048 * 2 + 1,
                    help="val tokens (the record needs >= eval_seq_len + 1)")
    ap.add_argument("--low", type=int, default=4,
                    help="smallest id drawn (default 4 skips pad/bos/eos/unk, which count 0 bytes)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if not 0 <= args.low < args.vocab <= 65536:
        raise SystemExit("need 0 <= low < vocab <= 65536")
    os.makedirs(args.out, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    per = -(-args.train_tokens // args.train_shards)
    left = args.train_tokens
    for i in range(args.train_shards):
        n = min(per, left)
        write_shard(os.path.join(args.out, f"fineweb_train_{i:06d}.bin"), random_tokens(rng, n, args.vocab, args.low))
        left -= n
    write_shard(os.path.join(args.out, "fineweb_val_000000.bin"), random_tokens(rng, args.val_tokens, args.vocab, args.low))
    print(f"wrote {args.train_shards} train shard(s), {args.train_tokens} tokens, and 1 val shard, "
          f"{args.val_tokens} tokens, vocab {args.vocab}, into {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
