import huggingface_hub
import numpy as np
import pytest

from pgolf.io import read_json
from pgolf.published import fetch_published_shards, published_names
from pgolf.shard_format import load_tokens, shard_paths, write_shard
from pgolf.tokenizer import build_tokenizer

CFG = {"hf_repo": "kevclark/parameter-golf", "hf_dir": "datasets/datasets/fineweb10B_sp8192",
       "hf_train_shards": 2, "hf_val_shards": 1, "hf_revision": None}


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    """A local stand-in for the HF dataset repo: hf_hub_download returns files under repo/."""
    repo = tmp_path / "repo"
    calls = []

    def download(repo_id, filename, revision=None, repo_type=None, cache_dir=None):
        calls.append((repo_id, filename, repo_type))
        path = repo / filename
        if not path.exists():
            raise FileNotFoundError(filename)
        return str(path)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    return repo, calls


def publish(repo, names_tokens):
    for name, tokens in names_tokens.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        write_shard(repo / name, np.asarray(tokens, dtype=np.uint16))


def test_published_shards_are_checked_and_placed(fake_hub, tiny_corpus, tmp_path):
    repo, calls = fake_hub
    rng = np.random.default_rng(0)
    content = {name: rng.integers(0, tiny_corpus.vocab_size, 1000 + i) for i, name in
               enumerate(published_names(CFG, "train") + published_names(CFG, "val"))}
    publish(repo, content)
    out = tmp_path / "out"
    manifest = fetch_published_shards(CFG, tiny_corpus.tokenizer_model, out / "train", out / "val", out / "manifest.json")
    assert manifest["splits"]["train"]["num_tokens"] == 1000 + 1001
    assert [p.name for p in shard_paths(out / "train")] == ["fineweb_train_000000.bin", "fineweb_train_000001.bin"]
    assert np.array_equal(load_tokens(shard_paths(out / "val")), content[published_names(CFG, "val")[0]])
    assert read_json(out / "manifest.json")["vocab_size"] == tiny_corpus.vocab_size
    assert all(repo_type == "dataset" for _, _, repo_type in calls)


def test_shards_beyond_the_tokenizer_vocab_are_refused_and_nothing_is_left(fake_hub, tiny_corpus, tmp_path):
    repo, _ = fake_hub
    names = published_names(CFG, "train") + published_names(CFG, "val")
    publish(repo, {name: [1, 2, tiny_corpus.vocab_size + 5] for name in names})
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="vocab size"):
        fetch_published_shards(CFG, tiny_corpus.tokenizer_model, out / "train", out / "val", out / "manifest.json")
    assert not (out / "val").exists() and not (out / "manifest.json").exists()


def test_corrupt_published_shard_names_the_file(fake_hub, tiny_corpus, tmp_path):
    repo, _ = fake_hub
    names = published_names(CFG, "train") + published_names(CFG, "val")
    publish(repo, {name: [1, 2, 3] for name in names})
    bad = repo / names[-1]
    bad.write_bytes(bad.read_bytes()[:-2])  # truncated
    with pytest.raises(ValueError, match=r"fineweb_val_000000.bin.*truncated"):
        fetch_published_shards(CFG, tiny_corpus.tokenizer_model, tmp_path / "t", tmp_path / "v", tmp_path / "m.json")


def test_published_tokenizer_is_downloaded_and_checked(fake_hub, tiny_corpus, tmp_path):
    repo, calls = fake_hub
    target = repo / "datasets/tokenizers/fineweb_8192_bpe.model"
    target.parent.mkdir(parents=True)
    target.write_bytes(tiny_corpus.tokenizer_model.read_bytes())
    cfg = {"vocab_size": tiny_corpus.vocab_size, "model": None, "hf_repo": "kevclark/parameter-golf",
           "hf_filename": "datasets/tokenizers/fineweb_8192_bpe.model", "hf_revision": None}
    meta = build_tokenizer(cfg, None, 0, tmp_path / "tok.model", tmp_path / "tok.json")
    assert meta["source"] == "hf:kevclark/parameter-golf/datasets/tokenizers/fineweb_8192_bpe.model"
    assert (tmp_path / "tok.model").read_bytes() == target.read_bytes()
