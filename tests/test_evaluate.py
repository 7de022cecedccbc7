import json
import os
import re

import numpy as np
import pytest
import torch

from pgolf.evaluate import evaluate_tokens, window_plan
from random_models import random_gpt


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

    def scored_losses(self, inputs, targets, keep):
        return self.loss(inputs, targets, reduction="none")[keep]


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


def test_compiled_eval_pads_to_one_shape_and_scores_the_same(monkeypatch):
    """compile=True: every forward sees batch_seqs full windows (one static graph), the padding scores
    nothing, the totals equal the plain path's, and the model keeps its own method afterwards."""
    from pgolf.model import GPT, ModelConfig

    torch.manual_seed(0)
    model = GPT(ModelConfig.from_train_cfg(dict(num_layers=2, model_dim=32, num_heads=4, num_kv_heads=2, mlp_mult=2,
                                                rope_base=10000.0, logit_softcap=30.0, seq_len=64), 64))
    shapes = []

    def recording_compile(fn, dynamic):  # stands in for torch.compile (no C++ toolchain needed on CPU)
        assert dynamic is False

        def wrapped(input_ids):
            shapes.append(tuple(input_ids.shape))
            return fn(input_ids)
        return wrapped

    monkeypatch.setattr(torch, "compile", recording_compile)
    tokens = np.random.default_rng(1).integers(0, 64, 700).astype(np.uint16)
    args = dict(luts=(np.ones(64, np.int16), np.zeros(64, bool), np.zeros(64, bool)), seq_len=64, stride=16,
                batch_seqs=5, device=torch.device("cpu"))
    plain = evaluate_tokens(model, tokens, **args)
    compiled = evaluate_tokens(model, tokens, **args, compile=True)
    num_windows = len(window_plan(699, 64, 16))
    assert num_windows % 5 != 0, "the last batch must be short for this test to check padding"
    assert shapes == [(5, 64)] * -(-num_windows // 5)
    assert compiled["scored_tokens"] == plain["scored_tokens"] == 699
    assert compiled["scored_bytes"] == plain["scored_bytes"]
    assert compiled["val_loss"] == pytest.approx(plain["val_loss"], rel=1e-9)
    assert "hidden_states" not in vars(model)


@pytest.fixture(scope="module")
def random_checkpoint(tmp_path_factory, tiny_corpus):
    """A random tiny model saved as the train stage saves model.pt (eval needs no training)."""
    model = random_gpt(tiny_corpus.vocab_size, 64)
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    torch.save({"model_config": model.config.to_dict(), "state_dict": model.state_dict()}, path)
    return path


def test_two_torchrun_ranks_score_the_same_as_one_process(random_checkpoint, tiny_corpus, tmp_path, capsys):
    """run_eval with 2 ranks (torchrun, gloo) splits the windows and all-reduces: same totals as in-process."""
    from pgolf.launch import run_eval

    cfg = {"seq_len": 64, "stride": 16, "batch_seqs": 7}  # an odd batch count: the ranks' shares differ
    results = {}
    for nproc in (1, 2):
        out, log = tmp_path / f"eval{nproc}.json", tmp_path / f"eval{nproc}.log"
        run_eval("prequant", random_checkpoint, tiny_corpus.val_dir, tiny_corpus.tokenizer_model, cfg, "cpu", out,
                 log, nproc=nproc, threads=2)
        results[nproc] = json.loads(out.read_text())
    one, two = results[1], results[2]
    assert (one["world_size"], two["world_size"]) == (1, 2)
    assert two["scored_tokens"] == one["scored_tokens"] > 0 and two["scored_bytes"] == one["scored_bytes"]
    assert two["val_loss"] == pytest.approx(one["val_loss"], rel=1e-12)
    assert two["val_bpb"] == pytest.approx(one["val_bpb"], rel=1e-12)
    assert not list(tmp_path.glob(".eval.*")), "scratch left behind"
    # the ranks' output goes to the log; rank 0's bar reaches this process's stderr as compact progress
    assert re.search(r"evaluation eval2: eval \d+% \(\d+/\d+ batches\), ETA", capsys.readouterr().err)
    for result in (one, two):  # the launcher adds the reproducibility record on either path
        assert result["provenance"]["torch_version"] == torch.__version__


def test_eval_json_names_the_jobs_gpus(random_checkpoint, tiny_corpus, tmp_path, monkeypatch):
    """The in-process rank gets the job's CUDA_VISIBLE_DEVICES, and eval.json names those devices."""
    from pgolf.gpus import Placement
    from pgolf.launch import run_eval

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # restored afterwards: run_eval sets it in this process
    out = tmp_path / "eval.json"
    run_eval("prequant", random_checkpoint, tiny_corpus.val_dir, tiny_corpus.tokenizer_model,
             {"seq_len": 64, "stride": 16, "batch_seqs": 7}, "cpu", out, tmp_path / "eval.log", nproc=1, threads=1,
             placement=Placement(["3"], "pgolf"))
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "3"
    placement = json.loads(out.read_text())["placement"]
    assert placement["placed_by"] == "pgolf" and placement["cuda_visible_devices"] == "3"
    assert [gpu["id"] for gpu in placement["gpus"]] == ["3"]


def test_failed_torchrun_eval_leaves_no_output(random_checkpoint, tiny_corpus, tmp_path):
    from pgolf.launch import run_eval

    out = tmp_path / "eval.json"
    with pytest.raises(RuntimeError, match="evaluation failed"):
        run_eval("prequant", random_checkpoint, tiny_corpus.train_dir / "missing", tiny_corpus.tokenizer_model,
                 {"seq_len": 64, "stride": 16, "batch_seqs": 7}, "cpu", out, tmp_path / "eval.log", nproc=2, threads=2)
    assert not out.exists() and not list(tmp_path.glob(".eval.*"))
    assert "no *.bin shards" in (tmp_path / "eval.log").read_text()


def test_ttt_eval_is_independent_of_the_rank_count(random_checkpoint, tiny_corpus, eval_defaults, tmp_path):
    """eval with LoRA + phased TTT on 1 rank and on 2 torchrun (gloo) ranks: the same documents, positions,
    tokens and bytes, NLLs equal up to float noise; eval.json records the settings and both timings; the
    per-document table lies beside it."""
    import pandas as pd

    from pgolf.launch import run_eval

    cfg = {**eval_defaults, "seq_len": 64, "ttt_lora_rank": 4, "ttt_lr": 0.01, "ttt_chunk_tokens": 32,
           "ttt_batch_docs": 4, "ttt_phase_docs": [10, 20], "ttt_global_lr": 0.1, "ttt_global_batch_tokens": 64}
    results, tables = {}, {}
    for nproc in (1, 2):
        out = tmp_path / f"n{nproc}" / "eval.json"
        run_eval("prequant", random_checkpoint, tiny_corpus.val_dir, tiny_corpus.tokenizer_model, cfg, "cpu", out,
                 tmp_path / f"eval{nproc}.log", nproc=nproc, threads=2)
        results[nproc] = json.loads(out.read_text())
        tables[nproc] = pd.read_parquet(out.with_name("eval_docs.parquet"))
    one, two = results[1], results[2]
    assert two["world_size"] == 2 and two["ttt"] == one["ttt"] and one["ttt"]["ttt_phase_docs"] == [10, 20]
    assert 0 < one["scoring_seconds"] <= one["eval_seconds"]
    assert 0 < one["warmup_seconds"] and one["warmup_seconds"] + one["scoring_seconds"] <= one["eval_seconds"]
    assert one["compiled_graphs"] == {"warm_up": 0, "scoring": 0}  # eval.compile is for CUDA: eager here
    assert two["scored_tokens"] == one["scored_tokens"] and two["scored_bytes"] == one["scored_bytes"]
    assert two["val_bpb"] == pytest.approx(one["val_bpb"], rel=1e-7)  # seen: 2e-9; gradients not all-reduced: 3e-6
    a, b = tables[1], tables[2]
    assert list(a.columns) == ["doc_index", "position", "tokens", "bytes", "nll_nats"]
    assert len(a) == tiny_corpus.num_val_docs and list(a["position"]) == list(range(len(a)))
    for column in ("doc_index", "position", "tokens", "bytes"):
        assert (a[column] == b[column]).all()
    np.testing.assert_allclose(b["nll_nats"], a["nll_nats"], rtol=1e-6)
    assert a["bytes"].sum() == one["scored_bytes"] and a["tokens"].sum() == one["scored_tokens"]
