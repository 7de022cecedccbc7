import numpy as np
import pytest
import torch

from pgolf.loader import DistributedTokenLoader, ShuffledWindows, TokenStream
from pgolf.shard_format import load_tokens, read_shard, shard_paths, write_shard


def test_ranks_get_disjoint_contiguous_slices_of_the_global_batch(tiny_corpus):
    args = (tiny_corpus.train_dir, tiny_corpus.vocab_size, 16, 128)
    single = DistributedTokenLoader(*args, order="stream")
    ranks = [DistributedTokenLoader(*args, rank=r, world_size=2, order="stream") for r in range(2)]
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
    stream = TokenStream(shard_paths(tmp_path), 512)
    assert stream.take(2).tolist() == [1, 5]  # only the tokens taken are checked
    with pytest.raises(ValueError, match="fineweb_train_000000.bin: token id 600 >= tokenizer vocab_size 512"):
        stream.take(1)


def _all_windows(train_dir, seq_len):
    """Every (seq_len + 1)-token slice of every shard, as a set of byte strings."""
    found = set()
    for path in shard_paths(train_dir):
        tokens = np.asarray(read_shard(path))
        for start in range(tokens.size - seq_len):
            found.add(tokens[start:start + seq_len + 1].tobytes())
    return found


def test_shuffled_epoch_visits_each_window_of_each_shard_once(tiny_corpus):
    seq_len, vocab = 16, tiny_corpus.vocab_size
    windows = ShuffledWindows(shard_paths(tiny_corpus.train_dir), vocab, seq_len, seed=3)
    per_epoch = int(windows.first_window[-1])
    sizes = [read_shard(p).size for p in windows.paths]
    assert per_epoch >= sum((n - seq_len) // seq_len for n in sizes)  # phase < seq_len loses at most one window
    rows = windows.take(per_epoch)
    starts = [(si, int(windows.phase[si]) + k * seq_len) for si in range(len(sizes))
              for k in range(int(windows.first_window[si + 1] - windows.first_window[si]))]
    expected = sorted(np.asarray(read_shard(windows.paths[si]))[s:s + seq_len + 1].tobytes() for si, s in starts)
    assert sorted(r.tobytes() for r in rows) == expected  # each window exactly once, no overlap within a shard
    first_rows = [r.tobytes() for r in rows[:50]]
    assert first_rows != expected[:50]  # not in shard order
    assert len({tuple(rows[i, :4]) for i in range(50)}) > 40
    # The next epoch is another permutation (and usually another phase), still made of real windows.
    again = windows.take(50)
    assert [r.tobytes() for r in again] != first_rows
    assert {r.tobytes() for r in again} <= _all_windows(tiny_corpus.train_dir, seq_len)


def test_shuffled_order_follows_the_seed(tiny_corpus):
    def first(seed):
        return ShuffledWindows(shard_paths(tiny_corpus.train_dir), tiny_corpus.vocab_size, 16, seed).take(20)

    np.testing.assert_array_equal(first(1), first(1))
    assert not np.array_equal(first(1), first(2))


@pytest.mark.parametrize("world_size", [2, 4])
def test_shuffled_ranks_split_the_single_process_batch(tiny_corpus, world_size):
    args = (tiny_corpus.train_dir, tiny_corpus.vocab_size, 64, 64 * 64)
    single = DistributedTokenLoader(*args, order="shuffled", seed=5)
    ranks = [DistributedTokenLoader(*args, rank=r, world_size=world_size, order="shuffled", seed=5)
             for r in range(world_size)]
    steps = 50
    assert steps * 64 > single.windows.first_window[-1]  # the loop crosses an epoch boundary
    for _ in range(steps):
        x, y = single.next_batch()
        parts = [loader.next_batch() for loader in ranks]
        assert x.shape == y.shape == (64, 64) and x.is_contiguous() and y.is_contiguous()
        torch.testing.assert_close(torch.cat([p[0] for p in parts]), x)
        torch.testing.assert_close(torch.cat([p[1] for p in parts]), y)
        torch.testing.assert_close(x[:, 1:], y[:, :-1])  # per row: targets are the inputs shifted by one


def test_stream_order_is_still_available(tiny_corpus):
    loader = DistributedTokenLoader(tiny_corpus.train_dir, tiny_corpus.vocab_size, 16, 128, order="stream")
    everything = load_tokens(shard_paths(tiny_corpus.train_dir))
    x, y = loader.next_batch()
    np.testing.assert_array_equal(x.flatten().numpy(), everything[:128])
    with pytest.raises(ValueError, match="train.data_order must be one of"):
        DistributedTokenLoader(tiny_corpus.train_dir, tiny_corpus.vocab_size, 16, 128, order="random")


def test_shuffled_refuses_shards_shorter_than_a_window(tmp_path):
    write_shard(tmp_path / "fineweb_train_000000.bin", np.arange(10, dtype=np.uint16))
    with pytest.raises(ValueError, match=r"no window of seq_len \+ 1 = 17 tokens"):
        ShuffledWindows(shard_paths(tmp_path), 512, 16, seed=0)


def test_shuffled_reports_tokens_outside_the_vocabulary_with_their_shard(tmp_path):
    write_shard(tmp_path / "fineweb_train_000000.bin", np.full(100, 7, dtype=np.uint16))
    write_shard(tmp_path / "fineweb_train_000001.bin", np.full(100, 600, dtype=np.uint16))
    with pytest.raises(ValueError, match="fineweb_train_000001.bin: token id 600 >= tokenizer vocab_size 512"):
        ShuffledWindows(shard_paths(tmp_path), 512, 16, seed=0).take(10)  # a whole epoch: both shards
