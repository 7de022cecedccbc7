import numpy as np
import pytest
import torch

from pgolf.loader import DistributedTokenLoader, TokenStream
from pgolf.shards import load_tokens, shard_paths, write_shard


def test_ranks_get_disjoint_contiguous_slices_of_the_global_batch(tiny_corpus):
    args = (tiny_corpus.train_dir, tiny_corpus.vocab_size, 16, 128)
    single = DistributedTokenLoader(*args)
    ranks = [DistributedTokenLoader(*args, rank=r, world_size=2) for r in range(2)]
    for _ in range(3):
        x, y = single.next_batch()
        parts = [loader.next_batch() for loader in ranks]
        assert x.shape == (8, 16) and parts[0][0].shape == (4, 16) and x.dtype == torch.int64
        torch.testing.assert_close(torch.cat([p[0] for p in parts]), x)
        torch.testing.assert_close(torch.cat([p[1] for p in parts]), y)
        torch.testing.assert_close(x.flatten()[1:], y.flatten()[:-1])  # targets are inputs shifted by one


def test_stream_follows_shards_in_order_and_wraps_around(tiny_corpus):
    paths = shard_paths(tiny_corpus.train_dir)
    assert len(paths) > 1  # the fixture's shards are small: the stream must cross boundaries
    everything = load_tokens(paths)
    stream = TokenStream(paths, tiny_corpus.vocab_size)
    first = stream.take(everything.size - 5)
    np.testing.assert_array_equal(first, everything[:-5])
    np.testing.assert_array_equal(stream.take(10), np.concatenate([everything[-5:], everything[:5]]))


def test_batch_must_split_evenly(tiny_corpus):
    with pytest.raises(ValueError, match="train.batch_tokens=100"):
        DistributedTokenLoader(tiny_corpus.train_dir, tiny_corpus.vocab_size, 16, 100)


def test_token_outside_vocabulary_is_reported(tmp_path):
    write_shard(tmp_path / "fineweb_train_000000.bin", np.array([1, 5, 600], dtype=np.uint16))
    with pytest.raises(ValueError, match="token id 600 >= tokenizer vocab_size 512"):
        TokenStream(shard_paths(tmp_path), 512)
