import hashlib
import json
import time

import pytest

from pgolf.docs import build_docs, load_split, read_jsonl_texts, synthetic_docs
from pgolf.hub import download_dataset_file
from pgolf.io import read_json, sha256_file


def _write_jsonl(path, texts):
    path.write_bytes("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts).encode())
    return path


def test_synthetic_is_deterministic_and_seeded():
    assert synthetic_docs(50, seed=7) == synthetic_docs(50, seed=7)
    assert synthetic_docs(50, seed=7) != synthetic_docs(50, seed=8)
    assert synthetic_docs(20, seed=7) == synthetic_docs(50, seed=7)[:20]


def test_synthetic_looks_like_web_text():
    docs = synthetic_docs(300, seed=1337)
    assert len(docs) == 300 and all(docs)
    text = "".join(docs)
    for needle in ("é", "ñ", "ü", "東京", "🚀", "\u2028", "\t", "▁", "  ", "\n\n", "$", ","):
        assert needle in text, needle
    assert any(ch.isdigit() for ch in text)
    assert any(d[0].isupper() for d in docs)
    lengths = sorted(len(d) for d in docs)
    assert lengths[-1] > 10 * lengths[0]  # varied lengths
    assert lengths[len(lengths) // 2] < 4192  # most fit SentencePiece's max_sentence_length


def test_synthetic_is_fast():
    start = time.process_time()  # CPU time: wall time on a shared 2-core box measures the neighbours
    synthetic_docs(1000, seed=1)
    assert time.process_time() - start < 1.0


def test_read_jsonl_splits_on_newline_only(tmp_path):
    texts = ["line\u2028separator\u2029para", "second\r\nwith crlf", "third\x85nel"]
    path = _write_jsonl(tmp_path / "d.jsonl", texts)
    with open(path, "ab") as f:
        f.write(b"\n  \n")  # blank lines are skipped
    assert read_jsonl_texts(path) == texts
    assert read_jsonl_texts(path, max_docs=2) == texts[:2]


@pytest.mark.parametrize("line, what", [
    (b"{not json", "not valid JSON"),
    (b'{"id": 3}', '"text"'),
    (b'{"text": ""}', '"text"'),
    (b'{"text": 5}', '"text"'),
    (b'["text"]', '"text"'),
])
def test_read_jsonl_errors_name_file_and_line(tmp_path, line, what):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b'{"text": "ok"}\n' + line + b"\n")
    with pytest.raises(ValueError, match=rf"bad\.jsonl:2: .*{what}"):
        read_jsonl_texts(path)


def test_build_docs_synthetic(tmp_path):
    cfg = {"source": "synthetic", "num_docs": 40, "num_val_docs": 5, "seed": 3}
    meta = build_docs(cfg, tmp_path / "docs.jsonl", tmp_path / "docs.json")
    assert read_json(tmp_path / "docs.json") == meta
    assert meta["source"] == "synthetic" and meta["num_docs"] == 40 and meta["num_val_docs"] == 5
    assert meta["docs_sha256"] == sha256_file(tmp_path / "docs.jsonl")
    assert meta["source_sha256"] == meta["docs_sha256"]  # the generated corpus is the source
    assert read_jsonl_texts(tmp_path / "docs.jsonl") == synthetic_docs(40, seed=3)
    assert "\\u" not in (tmp_path / "docs.jsonl").read_text()  # ensure_ascii=False: UTF-8, not escapes
    val, train = load_split(tmp_path / "docs.jsonl", 5)
    assert val + train == synthetic_docs(40, seed=3) and len(val) == 5


def test_build_docs_jsonl_reads_first_docs_in_file_order(tmp_path):
    texts = [f"document {i}\u2028end" for i in range(10)]
    src = _write_jsonl(tmp_path / "src.jsonl", texts)
    cfg = {"source": "jsonl", "path": str(src), "num_docs": 6, "num_val_docs": 2}
    meta = build_docs(cfg, tmp_path / "docs.jsonl", tmp_path / "docs.json")
    assert read_jsonl_texts(tmp_path / "docs.jsonl") == texts[:6]
    assert meta["source_sha256"] == sha256_file(src) and meta["num_docs"] == 6
    assert load_split(tmp_path / "docs.jsonl", 2) == (texts[:2], texts[2:6])


def test_build_docs_too_few_docs_names_file_and_writes_nothing(tmp_path):
    src = _write_jsonl(tmp_path / "src.jsonl", ["a", "b", "c"])
    cfg = {"source": "jsonl", "path": str(src), "num_docs": 100, "num_val_docs": 3}
    with pytest.raises(ValueError, match=r"src\.jsonl: 3 documents.*num_val_docs"):
        build_docs(cfg, tmp_path / "out" / "docs.jsonl", tmp_path / "out" / "docs.json")
    assert not (tmp_path / "out" / "docs.jsonl").exists() and not (tmp_path / "out" / "docs.json").exists()


def test_build_docs_config_errors(tmp_path):
    with pytest.raises(ValueError, match="docs.path"):
        build_docs({"source": "jsonl", "path": None, "num_docs": 5, "num_val_docs": 1}, tmp_path / "a", tmp_path / "b")
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        build_docs({"source": "jsonl", "path": str(tmp_path / "missing.jsonl"), "num_docs": 5, "num_val_docs": 1},
                   tmp_path / "a", tmp_path / "b")
    with pytest.raises(ValueError, match="docs.source"):
        build_docs({"source": "s3", "num_docs": 5, "num_val_docs": 1}, tmp_path / "a", tmp_path / "b")


def test_build_docs_hf_uses_hf_hub_download(tmp_path, monkeypatch):
    import huggingface_hub

    src = _write_jsonl(tmp_path / "docs_selected.jsonl", [f"doc {i}" for i in range(8)])
    calls = []

    def fake_download(**kwargs):
        calls.append(kwargs)
        return str(src)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    cfg = {"source": "hf", "hf_repo": "willdepueoai/parameter-golf", "hf_filename": "datasets/docs_selected.jsonl",
           "hf_revision": "abc123", "num_docs": 5, "num_val_docs": 2}
    meta = build_docs(cfg, tmp_path / "docs.jsonl", tmp_path / "docs.json")
    assert calls == [{"repo_id": "willdepueoai/parameter-golf", "filename": "datasets/docs_selected.jsonl",
                      "revision": "abc123", "repo_type": "dataset", "cache_dir": None}]
    assert meta["source"] == "hf" and meta["num_docs"] == 5
    assert meta["source_sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
    assert download_dataset_file("r", "f", None) == src
