"""Document sources for the docs stage: a seeded synthetic corpus, a local JSONL file, or the challenge docs on HF.

Whatever the source, the stage writes `docs.jsonl` (one {"text": ...} per line, validation documents first, in file
order, exactly as the challenge splits `docs_selected.jsonl`) plus a `docs.json` meta with hashes, so every later stage
is keyed by content. The synthetic corpus exists so the whole DAG runs offline on a laptop; it is built to exercise
the same tokenizer and byte-counting paths as web text (multi-byte UTF-8, digits, odd whitespace, a literal "▁").
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np
from tqdm import tqdm

from pgolf.hub import download_dataset_file
from pgolf.io import atomic_path, sha256_file, write_json

log = logging.getLogger(__name__)

FUNCTION_WORDS = (
    "the of and to a in is that for it as was with be by on not he this are or his from at which but have an they "
    "you were her she there one all we their been has when who will more no if out so said what up its about into "
    "than them can only other new some could time these two may then do first any my now such like our over"
).split()
SYLLABLES = (
    "ka ri to ne sa mo lu vi pe da gor tan mel sil bra ver con pro lin est ar in on ex al er um is ot"
).split()
ACCENTED = ("café", "naïve", "señor", "über", "façade", "mañana", "résumé", "Zürich", "São", "crème")
CJK = ("東京", "北京大学", "日本語の文章", "한국어", "中文测试", "データ")
EMOJI = ("😀", "🚀", "👍🏽", "❤️", "🇫🇷", "✨")
VOCAB_SEED = 20240520  # fixed: the vocabulary is part of the generator, only documents vary with `seed`


def _vocabulary(num_words: int = 3000) -> list[str]:
    """Deterministic pseudo-words (2-4 syllables), most frequent first after the English function words."""
    rng = np.random.default_rng(VOCAB_SEED)
    words, seen = list(FUNCTION_WORDS), set(FUNCTION_WORDS)
    while len(words) < num_words:
        word = "".join(SYLLABLES[i] for i in rng.integers(0, len(SYLLABLES), rng.integers(2, 5)))
        if word not in seen:
            seen.add(word)
            words.append(word)
    return words


_VOCAB = np.array(_vocabulary(), dtype=object)
_ZIPF_CDF = np.cumsum(1.0 / (np.arange(len(_VOCAB)) + 2.7))  # Zipf-Mandelbrot word frequencies by rank
_ZIPF_CDF /= _ZIPF_CDF[-1]
PUNCTUATION = np.array(list(".?!;"))


def _specials(rng: np.random.Generator, count: int) -> list[str]:
    """Tokens that web text has and plain words lack: numbers, prices, non-ASCII, odd whitespace (drawn in bulk)."""
    kinds, ints, cents = rng.integers(0, 10, count), rng.integers(0, 100_000, count), rng.integers(0, 100, count)
    out = []
    for kind, n, c in zip(kinds.tolist(), ints.tolist(), cents.tolist()):
        out.append((
            str(1900 + n % 130),  # a year
            f"${n % 1000}.{c:02d}",
            f"{n:,}",
            ACCENTED[n % len(ACCENTED)],
            CJK[n % len(CJK)],
            EMOJI[n % len(EMOJI)],
            "\u2028",
            "\t",
            "▁",  # a literal U+2581: SentencePiece reads it as a space, the byte rule must agree
            " ",  # becomes a double space after joining
        )[kind])
    return out


def _document(rng: np.random.Generator) -> str:
    # One draw per quantity for the whole document: per-call overhead dominates at this size.
    sents_per_par = rng.integers(1, 6, size=int(rng.integers(1, 13)))
    num_sents = int(sents_per_par.sum())
    lengths = np.clip(rng.lognormal(2.4, 0.5, size=num_sents), 2, 60).astype(int)
    ids = np.minimum(np.searchsorted(_ZIPF_CDF, rng.random(int(lengths.sum()))), len(_VOCAB) - 1)
    words = _VOCAB[ids].tolist()
    positions = np.flatnonzero(rng.random(len(words)) < 0.04).tolist()
    for pos, special in zip(positions, _specials(rng, len(positions))):
        words[pos] = special
    ends = PUNCTUATION[np.searchsorted([0.82, 0.90, 0.95], rng.random(num_sents), side="right")]
    sentences, start = [], 0
    for length, end in zip(lengths, ends):
        sentences.append(" ".join([words[start].capitalize()] + words[start + 1:start + length]) + end)
        start += length
    par_bounds = np.cumsum(sents_per_par)
    paragraphs = [" ".join(sentences[a:b]) for a, b in zip(np.r_[0, par_bounds[:-1]], par_bounds)]
    return ("\n\n" if rng.random() < 0.8 else "\n").join(paragraphs)


def synthetic_docs(num_docs: int, seed: int) -> list[str]:
    """`num_docs` web-like documents, a pure function of `seed`: Zipfian words, 1-12 paragraphs, lognormal lengths."""
    rng = np.random.default_rng(seed)
    return [_document(rng) for _ in tqdm(range(num_docs), desc="docs", unit="doc", mininterval=0.5)]


def read_jsonl_texts(path: str | os.PathLike, max_docs: int | None = None) -> list[str]:
    """The "text" of each line of a JSONL file, in file order.

    Lines are split on b"\\n" only: str.splitlines() would also split on U+2028 and friends inside documents.
    """
    path = Path(path)
    texts: list[str] = []
    with open(path, "rb") as f, tqdm(total=max_docs, desc=f"docs {path.name}", unit="doc", mininterval=0.5) as bar:
        for line_no, line in enumerate(f, start=1):  # binary iteration splits on b"\n" only
            if max_docs is not None and len(texts) >= max_docs:
                break
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                raise ValueError(f"{path}:{line_no}: not valid JSON ({err})") from None
            text = obj.get("text") if isinstance(obj, dict) else None
            if not isinstance(text, str) or not text:
                raise ValueError(f"{path}:{line_no}: expected a JSON object with a non-empty string \"text\"")
            texts.append(text)
            bar.update(1)
    return texts


def docs_jsonl_bytes(texts: list[str]) -> bytes:
    """The docs stage's JSONL: one {"text": ...} object per line, UTF-8."""
    return "".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts).encode("utf-8")


def build_docs(cfg: dict, out_jsonl: str | os.PathLike, out_meta: str | os.PathLike) -> dict:
    """The docs stage: read `cfg["num_docs"]` documents from `cfg["source"]`, write docs.jsonl and its meta."""
    source, num_docs, num_val_docs = cfg["source"], int(cfg["num_docs"]), int(cfg["num_val_docs"])
    if source == "synthetic":
        texts = synthetic_docs(num_docs, int(cfg["seed"]))
        where = f"docs.source=synthetic (docs.num_docs={num_docs})"
        source_sha256 = hashlib.sha256(docs_jsonl_bytes(texts)).hexdigest()
    elif source in ("jsonl", "hf"):
        if source == "jsonl":
            if not cfg.get("path"):
                raise ValueError("docs.path: required when docs.source is 'jsonl'")
            path = Path(cfg["path"])
            if not path.is_file():
                raise FileNotFoundError(f"docs.path: {path}: file not found")
        else:
            path = download_dataset_file(cfg["hf_repo"], cfg["hf_filename"], cfg.get("hf_revision"))
        texts = read_jsonl_texts(path, max_docs=num_docs)
        where = str(path)
        source_sha256 = sha256_file(path)
    else:
        raise ValueError(f"docs.source: unknown source {source!r} (expected synthetic, jsonl or hf)")
    if len(texts) < num_val_docs + 1:
        raise ValueError(f"{where}: {len(texts)} documents, need at least docs.num_val_docs + 1 = {num_val_docs + 1}")
    data = docs_jsonl_bytes(texts)
    with atomic_path(out_jsonl) as tmp:
        tmp.write_bytes(data)
    meta = {"source": source, "num_docs": len(texts), "num_val_docs": num_val_docs,
            "source_sha256": source_sha256, "docs_sha256": hashlib.sha256(data).hexdigest()}
    write_json(out_meta, meta)
    log.info("docs: %d documents (%d validation), %d bytes of JSONL", len(texts), num_val_docs, len(data))
    return meta


def load_split(docs_jsonl: str | os.PathLike, num_val_docs: int) -> tuple[list[str], list[str]]:
    """(validation, train) texts: validation is the first `num_val_docs` documents, as in the challenge."""
    texts = read_jsonl_texts(docs_jsonl)
    if len(texts) < num_val_docs + 1:
        raise ValueError(f"{docs_jsonl}: {len(texts)} documents, need more than num_val_docs={num_val_docs}")
    return texts[:num_val_docs], texts[num_val_docs:]
