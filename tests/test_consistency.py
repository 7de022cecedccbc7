"""Cross-key rules: written once, checked before any job for the whole config and again at run time
by ModelConfig and the train process, with the same message naming the keys."""
import pytest

from pgolf.consistency import batch_split_errors, model_shape_errors
from pgolf.model import ModelConfig

SHAPE = dict(model_dim=64, num_heads=4, num_kv_heads=2, num_layers=4, rope_dims=None, loop_layers=[1, 2])


@pytest.mark.parametrize("change, message", [
    (dict(num_heads=6, num_kv_heads=3), r"train.model_dim \(64\) must be divisible by train.num_heads \(6\)"),
    (dict(model_dim=48, num_heads=16, num_kv_heads=4), r"train.model_dim / train.num_heads \(3\) must be even"),
    (dict(rope_dims=6, num_heads=16, num_kv_heads=4), r"train.rope_dims \(6\) must be even and in 2..head dim"),
    (dict(num_kv_heads=3), r"train.num_heads must be divisible by train.num_kv_heads"),
    (dict(loop_layers=[1, 3]), r"train.loop_layers \[1, 3\] must be contiguous"),
    (dict(loop_layers=[3, 4]), r"below train.num_layers \(4\)"),
])
def test_model_shape_rule_reads_the_same_before_the_run_and_in_the_model(change, message):
    shape = dict(SHAPE, **change)
    errors = model_shape_errors(**shape)
    assert len(errors) == 1
    with pytest.raises(ValueError, match=message) as raised:
        ModelConfig(vocab_size=8, mlp_mult=2, rope_base=1e4, logit_softcap=30.0, seq_len=16, **shape)
    assert str(raised.value) == errors[0]


def test_a_consistent_shape_passes():
    assert model_shape_errors(**SHAPE) == [] and ModelConfig(vocab_size=8, mlp_mult=2, rope_base=1e4,
                                                              logit_softcap=30.0, seq_len=16, **SHAPE).loops is False


def test_batch_split_names_every_factor():
    assert batch_split_errors(4096, 128, 8, 4) == []
    assert batch_split_errors(4096, 128, 8, 8) == [
        "train.batch_tokens=4096 must be a multiple of train.seq_len=128 * ranks=8 * train.grad_accum_steps=8"]
    assert batch_split_errors(4096, 128, 1, 0)  # no micro-batches at all

