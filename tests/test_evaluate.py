import numpy as np
import pytest
import torch

from pgolf.evaluate import evaluate_tokens, window_plan


@pytest.mark.parametrize("num_targets,seq_len,stride", [(1000, 128, 64), (1000, 128, 128), (1000, 128, 1),
                                                         (129, 128, 64), (50, 128, 16), (997, 100, 33)])
def test_window_plan_scores_every_target_exactly_once(num_targets, seq_len, stride):
    counts = np.zeros(num_targets, dtype=int)
    length = min(seq_len, num_targets)
    plan = window_plan(num_targets, seq_len, stride)
    for start, offset in plan:
        assert 0 <= start and start + length <= num_targets
        counts[start + offset:start + length] += 1
    assert (counts == 1).all()
    # after the first window, each scored target has at least seq_len - stride tokens of context
    for _, offset in plan[1:]:
        assert offset >= length - stride


class Bigram(torch.nn.Module):
    """A context-free model: its NLL per token is the same whatever the window, which lets a test
    compare sliding-window totals with a direct sum."""

    def __init__(self, vocab):
        super().__init__()
        self.table = torch.nn.Parameter(torch.randn(vocab, vocab))

    def loss(self, inputs, targets, reduction="mean"):
        nll = torch.nn.functional.cross_entropy(self.table[inputs].transpose(1, 2), targets, reduction="none")
        return nll if reduction == "none" else nll.mean()


def test_sliding_eval_totals_match_direct_sum():
    torch.manual_seed(0)
    vocab = 16
    model = Bigram(vocab)
    tokens = np.random.default_rng(0).integers(0, vocab, 777).astype(np.uint16)
    base = np.arange(vocab) % 3  # bytes per token
    luts = (base.astype(np.int16), np.zeros(vocab, bool), np.zeros(vocab, bool))
    x, y = torch.from_numpy(tokens[:-1].astype(np.int64)), torch.from_numpy(tokens[1:].astype(np.int64))
    direct_nll = float(model.loss(x[None], y[None], reduction="none").detach().double().sum())
    direct_bytes = int(base[tokens[1:]].sum())
    for stride in (16, 37, 64):
        result = evaluate_tokens(model, tokens, luts, seq_len=64, stride=stride, batch_seqs=5,
                                 device=torch.device("cpu"))
        assert result["scored_tokens"] == 776
        assert result["scored_bytes"] == direct_bytes
        assert result["val_loss"] == pytest.approx(direct_nll / 776, rel=1e-6)
        assert result["val_bpb"] == pytest.approx(direct_nll / np.log(2) / direct_bytes, rel=1e-6)
