"""A stand-in for a record's train_gpt.py, for pgolf's tests: same environment variables, same log lines.

The "model" is a unigram distribution counted from random training batches (one batch per step), so it
runs in seconds on a CPU, yet every number it prints is real: the val loss is the cross-entropy of the
validation shards under the model, val_bpb divides it by their UTF-8 bytes as the challenge counts them,
and the final score is that of the int8 + zlib artifact read back from disk.
Test knobs: CRASH_AT_STEP=<n> raises at step n; SKIP_FINAL_EVAL=1 prints no final score.
"""
import glob
import math
import os
import time
import zlib

import numpy as np
import sentencepiece as spm

DATA_PATH = os.environ.get("DATA_PATH", "./data/datasets/fineweb10B_sp1024")
TOKENIZER_PATH = os.environ.get("TOKENIZER_PATH", "./data/tokenizers/fineweb_1024_bpe.model")
VOCAB_SIZE = int(os.environ.get("VOCAB_SIZE", 1024))
SEED = int(os.environ.get("SEED", 1337))
RUN_ID = os.environ.get("RUN_ID", "run")
MAX_WALLCLOCK_SECONDS = float(os.environ.get("MAX_WALLCLOCK_SECONDS", 600.0))
ITERATIONS = int(os.environ.get("ITERATIONS", 20))
TRAIN_BATCH_TOKENS = int(os.environ.get("TRAIN_BATCH_TOKENS", 4096))
TRAIN_LOG_EVERY = int(os.environ.get("TRAIN_LOG_EVERY", 5))
CRASH_AT_STEP = int(os.environ.get("CRASH_AT_STEP", 0))
SKIP_FINAL_EVAL = os.environ.get("SKIP_FINAL_EVAL", "0") == "1"
MASTER = int(os.environ.get("RANK", "0")) == 0
LOGFILE = f"logs/{RUN_ID}.txt"


def log0(message):
    if not MASTER:
        return
    print(message, flush=True)
    with open(LOGFILE, "a", encoding="utf-8") as f:
        print(message, file=f)


def load_shards(pattern):
    files = sorted(glob.glob(pattern))
    if not files:
        raise FileNotFoundError(f"No files found for pattern: {pattern}")
    parts = []
    for path in files:
        header = np.fromfile(path, dtype="<i4", count=256)
        assert header[0] == 20240520, f"{path}: bad magic"
        parts.append(np.fromfile(path, dtype="<u2", count=int(header[2]), offset=256 * 4))
    return np.concatenate(parts).astype(np.int64)


def byte_tables(sp):
    """The challenge's byte count per token: piece bytes, plus one for a leading space after a non-boundary."""
    base = np.zeros(VOCAB_SIZE, dtype=np.int64)
    space = np.zeros(VOCAB_SIZE, dtype=bool)
    boundary = np.ones(VOCAB_SIZE, dtype=bool)
    for t in range(sp.vocab_size()):
        if sp.is_control(t) or sp.is_unknown(t) or sp.is_unused(t):
            continue
        boundary[t] = False
        if sp.is_byte(t):
            base[t] = 1
            continue
        piece = sp.id_to_piece(t)
        if piece.startswith("\u2581"):
            space[t], piece = True, piece[1:]
        base[t] = len(piece.encode("utf-8"))
    return base, space, boundary


def evaluate(log_probs, val, tables):
    base, space, boundary = tables
    targets, previous = val[1:], val[:-1]
    nats = -float(log_probs[targets].sum())
    num_bytes = int((base[targets] + (space[targets] & ~boundary[previous])).sum())
    return nats / len(targets), nats / math.log(2) / num_bytes


def main():
    os.makedirs("logs", exist_ok=True)
    rng = np.random.default_rng(SEED)
    train = load_shards(os.path.join(DATA_PATH, "fineweb_train_*.bin"))
    val = load_shards(os.path.join(DATA_PATH, "fineweb_val_*.bin"))
    tables = byte_tables(spm.SentencePieceProcessor(model_file=TOKENIZER_PATH))
    log0(f"val_bpb:enabled tokenizer_kind=sentencepiece tokenizer_path={TOKENIZER_PATH}")
    counts = np.ones(VOCAB_SIZE)
    start, step = time.perf_counter(), 0
    while step < ITERATIONS:
        if CRASH_AT_STEP and step + 1 == CRASH_AT_STEP:
            raise RuntimeError(f"CUDA error: an illegal memory access was encountered (step {step + 1})")
        batch = train[rng.integers(0, len(train), TRAIN_BATCH_TOKENS)]
        train_loss = -float(np.log(counts / counts.sum())[batch].mean())
        np.add.at(counts, batch, 1.0)
        step += 1
        elapsed_ms = 1000.0 * (time.perf_counter() - start)
        if step % TRAIN_LOG_EVERY == 0:
            log0(f"step:{step}/{ITERATIONS} train_loss:{train_loss:.4f} train_time:{elapsed_ms:.0f}ms "
                 f"step_avg:{elapsed_ms / step:.2f}ms")
        if elapsed_ms > 1000.0 * MAX_WALLCLOCK_SECONDS:
            log0(f"stopping_early: wallclock_cap train_time:{elapsed_ms:.0f}ms step:{step}/{ITERATIONS}")
            break
    log_probs = np.log(counts / counts.sum())
    val_loss, val_bpb = evaluate(log_probs, val, tables)
    log0(f"step:{step}/{ITERATIONS} val_loss:{val_loss:.4f} val_bpb:{val_bpb:.4f} "
         f"train_time:{elapsed_ms:.0f}ms step_avg:{elapsed_ms / step:.2f}ms")
    scale = float(np.abs(log_probs).max()) / 127.0
    quantized = np.round(log_probs / scale).astype(np.int8)
    with open("final_model.int8.ptz", "wb") as f:
        f.write(zlib.compress(np.float32(scale).tobytes() + quantized.tobytes(), level=9))
    model_bytes, code_bytes = os.path.getsize("final_model.int8.ptz"), os.path.getsize(__file__)
    log0(f"Serialized model int8+zlib: {model_bytes} bytes")
    log0(f"Code size: {code_bytes} bytes")
    log0(f"Total submission size int8+zlib: {model_bytes + code_bytes} bytes")
    if SKIP_FINAL_EVAL:
        return
    with open("final_model.int8.ptz", "rb") as f:
        raw = zlib.decompress(f.read())
    restored = np.frombuffer(raw[4:], dtype=np.int8).astype(np.float64) * float(np.frombuffer(raw[:4], np.float32)[0])
    restored -= np.log(np.exp(restored).sum())  # renormalize after rounding
    q_loss, q_bpb = evaluate(restored, val, tables)
    log0(f"final_int8_zlib_roundtrip val_loss:{q_loss:.4f} val_bpb:{q_bpb:.4f} eval_time:0ms")
    log0(f"final_int8_zlib_roundtrip_exact val_loss:{q_loss:.8f} val_bpb:{q_bpb:.8f}")


if __name__ == "__main__":
    main()
