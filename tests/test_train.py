import json
import math
import re

import pytest
import torch

from pgolf.config import section_defaults
from pgolf.hessians import EMBED_KEY, NUM_TOKENS_KEY
from pgolf.launch import TRAIN_FILES, launch_env, run_train, torchrun_command
from pgolf.model import build_model
from pgolf.optim import build_optimizers
from pgolf.train import Trainer, train, train_step

# A tiny model on the schema's defaults, as the workflow would hand it over.
TINY = dict(section_defaults("train"), nproc=1, device="cpu", num_layers=1, model_dim=32, num_heads=2, num_kv_heads=1,
            mlp_mult=2, rope_base=10000.0, logit_softcap=30.0, seq_len=32, batch_tokens=512, grad_accum_steps=1,
            max_steps=20, max_wallclock_seconds=300.0, warmup_steps=2, warmdown_frac=0.3, matrix_lr=0.04,
            scalar_lr=0.02, embed_lr=0.05, muon_momentum=0.95, weight_decay=0.0, ema_decay=0.9, hessian_batches=2, log_every=5)
SUMMARY_KEYS = {"steps", "train_seconds", "step_ms", "tokens_per_second", "peak_memory_bytes", "world_size",
                "device", "final_train_loss", "hessian_seconds", "stopped_by", "train_budget_seconds"}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny_run(tiny_corpus, tmp_path_factory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("train")
    summary = train(TINY, tiny_corpus.train_dir, tiny_corpus.tokenizer_model, out, seed=1)
    return out, summary


def logged_losses(log_text: str) -> list[float]:
    return [float(m) for m in re.findall(r"^step \d+/\d+ loss (\S+)", log_text, flags=re.M)]


def test_training_writes_every_file_and_loss_decreases(tiny_run, tiny_corpus):
    out, summary = tiny_run
    assert {p.name for p in out.iterdir()} == set(TRAIN_FILES)
    saved = json.loads((out / "train.json").read_text())
    assert SUMMARY_KEYS <= set(saved) and saved == json.loads(json.dumps(summary))
    assert saved["steps"] == 20 and saved["stopped_by"] == "max_steps" and saved["world_size"] == 1
    assert saved["device"] == "cpu" and saved["peak_memory_bytes"] > 0 and saved["tokens_per_second"] > 0
    assert saved["train_budget_seconds"] == saved["train_seconds"] + saved["hessian_seconds"] > saved["train_seconds"]

    log_text = (out / "train.log").read_text()
    assert log_text.startswith("# hyperparameters\n") and "\nmatrix_lr: 0.04\n" in log_text
    losses = logged_losses(log_text)
    assert len(losses) == 4
    assert losses[-1] < losses[0] < math.log(tiny_corpus.vocab_size) + 0.5
    assert saved["final_train_loss"] == pytest.approx(losses[-1], abs=1e-4)

    ckpt = torch.load(out / "model.pt", map_location="cpu", weights_only=True)
    model = build_model(ckpt["model_config"])
    model.load_state_dict(ckpt["state_dict"], strict=True)
    assert ckpt["model_config"]["vocab_size"] == tiny_corpus.vocab_size
    assert all(v.dtype == torch.float32 for v in ckpt["state_dict"].values())
    assert ckpt["state_dict"]["blocks.0.attn.proj.weight"].any()  # trained away from its zero init


def test_hessians_are_symmetric_psd_with_the_right_shapes(tiny_run):
    out, _ = tiny_run
    hessians = torch.load(out / "hessians.pt", map_location="cpu", weights_only=True)
    state = torch.load(out / "model.pt", map_location="cpu", weights_only=True)["state_dict"]
    matrices = {n for n, w in state.items() if n.startswith("blocks.") and w.ndim == 2}
    assert set(hessians) == matrices | {EMBED_KEY, NUM_TOKENS_KEY}
    assert hessians[NUM_TOKENS_KEY] == TINY["hessian_batches"] * TINY["batch_tokens"]
    for name in matrices | {EMBED_KEY}:
        h = hessians[name]
        assert h.dtype == torch.float32 and h.shape == (state[name].shape[1],) * 2, name
        torch.testing.assert_close(h, h.T)
        assert torch.linalg.eigvalsh(h.double()).min() > -1e-4 * h.diagonal().max(), name
        assert h.diagonal().min() > 0, name


def test_wallclock_cap_stops_training(tiny_corpus, tmp_path):
    cfg = dict(TINY, max_steps=100_000, max_wallclock_seconds=1.0)
    summary = train(cfg, tiny_corpus.train_dir, tiny_corpus.tokenizer_model, tmp_path, seed=1)
    assert summary["stopped_by"] == "wallclock" and 1 <= summary["steps"] < 100_000
    assert (tmp_path / "model.pt").exists()


def test_non_finite_loss_fails_clearly_and_leaves_nothing(tiny_corpus, tmp_path):
    cfg = dict(TINY, matrix_lr=float("inf"))
    with pytest.raises(FloatingPointError, match=r"non-finite training loss nan at step \d+"):
        train(cfg, tiny_corpus.train_dir, tiny_corpus.tokenizer_model, tmp_path, seed=1)
    assert list(tmp_path.iterdir()) == []


def test_gradient_accumulation_takes_the_same_steps(tiny_corpus, tmp_path):
    cfg = dict(TINY, max_steps=3)
    states = []
    for accum in (1, 4):
        train(dict(cfg, grad_accum_steps=accum), tiny_corpus.train_dir, tiny_corpus.tokenizer_model,
              tmp_path / str(accum), seed=1)
        states.append(torch.load(tmp_path / str(accum) / "model.pt", weights_only=True)["state_dict"])
    for name, w in states[0].items():
        torch.testing.assert_close(states[1][name], w, atol=1e-4, rtol=1e-3, msg=name)
    with pytest.raises(ValueError, match="grad_accum_steps=3"):
        train(dict(cfg, grad_accum_steps=3), tiny_corpus.train_dir, tiny_corpus.tokenizer_model, tmp_path, seed=1)


class FixedBatch:
    """A loader that hands out one batch, as DistributedTokenLoader.next_batch does: (inputs, targets)."""

    def __init__(self, inputs, targets):
        self.batch, self.calls = (inputs, targets), 0

    def next_batch(self):
        self.calls += 1
        return self.batch


def test_train_step_is_one_accumulated_optimizer_step():
    """train_step on its own (as bench/diff_reference.py calls it): the loss returned is the mean over
    micro-batches at the weights before the step, the weights move and the gradients are cleared."""
    torch.manual_seed(0)
    model = build_model({k: TINY[k] for k in ("num_layers", "model_dim", "num_heads", "num_kv_heads", "mlp_mult",
                                               "rope_base", "logit_softcap", "seq_len")} | {"vocab_size": 64})
    x, y = torch.randint(0, 64, (4, 32)), torch.randint(0, 64, (4, 32))
    with torch.no_grad():
        expected = (model(x[:2], y[:2]) + model(x[2:], y[2:])) / 2
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = Trainer(model, model, model, build_optimizers(model, TINY, torch.device("cpu")), torch.device("cpu"),
                      accum_steps=2, grad_clip_norm=0.0)
    loader = FixedBatch(x, y)
    loss = train_step(trainer, loader)
    assert loader.calls == 1 and float(loss) == pytest.approx(float(expected), rel=1e-6)
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


def test_missing_config_key_is_named(tiny_corpus, tmp_path):
    cfg = {k: v for k, v in TINY.items() if k != "ema_decay"}
    with pytest.raises(KeyError, match="ema_decay"):
        train(cfg, tiny_corpus.train_dir, tiny_corpus.tokenizer_model, tmp_path, seed=1)


def test_torchrun_command_and_env():
    cmd = torchrun_command(2, "pgolf.train", ["--config", "p.json", "--seed", 3], python="/venv/python")
    assert cmd == ["/venv/python", "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                   "-m", "pgolf.train", "--config", "p.json", "--seed", "3"]
    with pytest.raises(ValueError, match="nproc must be >= 1"):
        torchrun_command(0, "pgolf.train", [])
    env = launch_env(threads=4, nproc=2, base={"PYTHONPATH": "/x"})
    assert env["OMP_NUM_THREADS"] == "2" and env["PYTHONPATH"].endswith("/x")


def test_torchrun_two_ranks_on_gloo_match_one_rank(tiny_corpus, tiny_run, tmp_path):
    """Two ranks split each global batch and average gradients: the same run as one rank, up to rounding."""
    outputs = {name: tmp_path / "outputs" / name for name in TRAIN_FILES}
    log_path = tmp_path / "train_stage.log"
    run_train(TINY, tiny_corpus.train_dir, tiny_corpus.tokenizer_model, 1, outputs, log_path, nproc=2, threads=2)
    summary = json.loads(outputs["train.json"].read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 20
    assert summary["placement"] == {"placed_by": "none", "cuda_visible_devices": "", "gpus": []}  # a CPU job
    assert summary["provenance"]["torch_version"] == torch.__version__ and summary["provenance"]["gpu_model"] is None
    assert "world_size: 2" in outputs["train.log"].read_text()
    assert sorted(p.name for p in (tmp_path / "outputs").iterdir()) == sorted(TRAIN_FILES)  # no scratch left

    one_rank = torch.load(tiny_run[0] / "model.pt", weights_only=True)["state_dict"]
    two_ranks = torch.load(outputs["model.pt"], weights_only=True)["state_dict"]
    for name, w in one_rank.items():
        torch.testing.assert_close(two_ranks[name], w, atol=2e-3, rtol=1e-2, msg=name)
    h1 = torch.load(tiny_run[0] / "hessians.pt", weights_only=True)
    h2 = torch.load(outputs["hessians.pt"], weights_only=True)
    assert h2[NUM_TOKENS_KEY] == h1[NUM_TOKENS_KEY]  # ranks' calibration tokens summed, not duplicated


def test_fused_attention_ops_under_two_ranks_match_the_plain_code_on_one(tiny_corpus, tmp_path):
    """The custom ops' backwards feed DDP's gradient reduction like autograd's own (gloo, 2 ranks)."""
    cfg = dict(TINY, max_steps=4, xsa=True, qk_gain_init=4.0, rope_dims=8)
    train(cfg, tiny_corpus.train_dir, tiny_corpus.tokenizer_model, tmp_path / "plain", seed=1)
    outputs = {name: tmp_path / "fused" / name for name in TRAIN_FILES}
    run_train(dict(cfg, fused_qk=True, fused_xsa=True), tiny_corpus.train_dir, tiny_corpus.tokenizer_model, 1,
              outputs, tmp_path / "fused.log", nproc=2, threads=2)
    plain = torch.load(tmp_path / "plain" / "model.pt", weights_only=True)["state_dict"]
    fused = torch.load(outputs["model.pt"], weights_only=True)["state_dict"]
    gain = "blocks.0.attn.q_gain"
    assert (plain[gain] - 4.0).abs().min() > 1e-3  # trained: a gain gradient lost in the op would show
    for name, w in plain.items():
        torch.testing.assert_close(fused[name], w, atol=1e-5, rtol=1e-4, msg=name)


def test_failed_launch_raises_and_leaves_no_outputs(tiny_corpus, tmp_path):
    outputs = {name: tmp_path / name for name in TRAIN_FILES}
    log_path = tmp_path / "stage.log"
    with pytest.raises(RuntimeError, match="training failed"):
        run_train(dict(TINY, matrix_lr=float("inf")), tiny_corpus.train_dir, tiny_corpus.tokenizer_model, 1,
                  outputs, log_path, nproc=1, threads=1)
    assert "non-finite training loss" in log_path.read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stage.log"]


RECORD_SWITCHES = dict(mlp_activation="leaky_relu2", rope_dims=8, qk_gain_init=4.0, layer_norm_scale=True,
                       norm_weight=False, resid_mix=True, embed_norm=True, unet_skips=True, xsa=True,
                       loop_layers=[1], loop_repeats=3, loop_start_frac=0.5, embed_init_std=0.005,
                       orthogonal_init=True, muon_row_norm=True, muon_momentum_warmup_start=0.85,
                       muon_momentum_warmup_steps=5, embed_weight_decay=0.085, scalar_weight_decay=0.02,
                       grad_clip_norm=0.3, gptq_reserve_seconds=0.5, warmup_steps=0, sync_every_steps=3)


def test_record_stack_switches_train_and_loop_from_half_way(tiny_corpus, tmp_path):
    cfg = dict(TINY, num_layers=3, max_steps=12, log_every=4, **RECORD_SWITCHES)
    summary = train(cfg, tiny_corpus.train_dir, tiny_corpus.tokenizer_model, tmp_path, seed=1)
    assert summary["loop_start_step"] == 6 and summary["steps"] == 12
    log_text = (tmp_path / "train.log").read_text()
    assert "depth recurrence on at step 6" in log_text and "[0, 1, 1, 1, 2]" in log_text
    losses = logged_losses(log_text)
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses) and losses[-1] < losses[0]
    ckpt = torch.load(tmp_path / "model.pt", map_location="cpu", weights_only=True)
    model = build_model(ckpt["model_config"])
    model.load_state_dict(ckpt["state_dict"], strict=True)
    assert model.looping and ckpt["model_config"]["xsa"]  # evaluation runs the looped model
    hessians = torch.load(tmp_path / "hessians.pt", map_location="cpu", weights_only=True)
    assert set(k for k in hessians if k.startswith("blocks.")) == {
        n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) for n in [n + ".weight"]}


def test_grad_clip_bounds_the_update(tiny_corpus, tmp_path):
    """A clip far below the gradient norm changes the trained weights (through momentum and Adam's moments)."""
    base = dict(TINY, max_steps=3, warmup_steps=0)
    states = []
    for clip in (0.0, 1e-3):
        train(dict(base, grad_clip_norm=clip), tiny_corpus.train_dir, tiny_corpus.tokenizer_model,
              tmp_path / str(clip), seed=1)
        states.append(torch.load(tmp_path / str(clip) / "model.pt", weights_only=True)["state_dict"])
    assert any(not torch.allclose(states[0][k], states[1][k]) for k in states[0])


def test_compile_warmup_restores_the_initial_state(tiny_corpus, tmp_path):
    """Untimed warm-up steps (both graph variants) leave weights, optimizer state and data order as before."""
    base = dict(TINY, max_steps=4, warmup_steps=0, loop_layers=[0], loop_repeats=2, loop_start_frac=0.5)
    states = []
    for warm in (0, 2):
        train(dict(base, compile_warmup_steps=warm), tiny_corpus.train_dir, tiny_corpus.tokenizer_model,
              tmp_path / str(warm), seed=1)
        states.append(torch.load(tmp_path / str(warm) / "model.pt", weights_only=True)["state_dict"])
    for k in states[0]:
        torch.testing.assert_close(states[1][k], states[0][k], msg=k)


def test_gptq_reserve_seconds_shortens_training(tiny_corpus, tmp_path):
    """The reserve comes off the wall-clock budget: training stops by budget - reserve (plus one step)."""
    cfg = dict(TINY, max_steps=100_000, max_wallclock_seconds=3.0, gptq_reserve_seconds=2.0, sync_every_steps=1)
    summary = train(cfg, tiny_corpus.train_dir, tiny_corpus.tokenizer_model, tmp_path, seed=1)
    assert summary["stopped_by"] == "wallclock"
    assert 1.0 <= summary["train_seconds"] < 1.0 + 2 * summary["step_ms"] / 1000 + 0.5


@pytest.mark.parametrize("switches", [("fused_ce",), ("fused_qk", "fused_xsa")])
def test_fused_kernels_train_the_same_model(tiny_corpus, tmp_path, switches):
    """train.fused_ce, fused_qk, fused_xsa: the same three steps as the plain code, through the whole train stage."""
    states = []
    for fused in (False, True):
        cfg = dict(TINY, max_steps=3, xsa=True, qk_gain_init=4.0, rope_dims=8, **{k: fused for k in switches})
        train(cfg, tiny_corpus.train_dir, tiny_corpus.tokenizer_model, tmp_path / str(fused), seed=1)
        states.append(torch.load(tmp_path / str(fused) / "model.pt", weights_only=True)["state_dict"])
    for name, w in states[0].items():
        torch.testing.assert_close(states[1][name], w, atol=1e-5, rtol=1e-4, msg=name)


NO_ABORT = {"after_steps": 5, "loss_above": None, "step_ms_above": None, "min_projected_steps": None}


@pytest.mark.parametrize("rule", [{"loss_above": {"step": 10, "value": 0.01}}, {"step_ms_above": 1e-6},
                                  {"min_projected_steps": 10**9}], ids=lambda rule: next(iter(rule)))
def test_abort_rule_stops_the_run_at_a_log_step_and_says_why(tiny_corpus, tmp_path, rule):
    name = next(iter(rule))
    summary = train(dict(TINY, abort=dict(NO_ABORT, **rule)), tiny_corpus.train_dir, tiny_corpus.tokenizer_model,
                    tmp_path, seed=1)
    first_step = 10 if name == "loss_above" else 5  # the first log step the rule is checked at
    assert summary["aborted"] and summary["stopped_by"] == "abort" and summary["steps"] == first_step
    assert summary["abort_reason"].startswith(name)
    saved = json.loads((tmp_path / "train.json").read_text())
    assert saved["aborted"] and saved["abort_reason"] == summary["abort_reason"]
    assert f"abort: {name}" in (tmp_path / "train.log").read_text()
    assert (tmp_path / "model.pt").exists() and (tmp_path / "hessians.pt").exists()  # the DAG goes on


def test_rules_that_do_not_fire_leave_the_run_alone(tiny_corpus, tmp_path):
    relaxed = dict(NO_ABORT, loss_above={"step": 5, "value": 100.0}, step_ms_above=1e6, min_projected_steps=1)
    summary = train(dict(TINY, abort=relaxed), tiny_corpus.train_dir, tiny_corpus.tokenizer_model, tmp_path, seed=1)
    assert not summary["aborted"] and summary["abort_reason"] is None and summary["steps"] == 20


def test_abort_under_two_ranks_ends_the_job_cleanly(tiny_corpus, tmp_path):
    """Both ranks stop at the same step (the verdict is all-reduced) and the launcher gets a clean exit."""
    outputs = {name: tmp_path / "out" / name for name in TRAIN_FILES}
    cfg = dict(TINY, abort=dict(NO_ABORT, step_ms_above=1e-6))
    run_train(cfg, tiny_corpus.train_dir, tiny_corpus.tokenizer_model, 1, outputs, tmp_path / "stage.log", nproc=2,
              threads=2)
    summary = json.loads(outputs["train.json"].read_text())
    assert summary["aborted"] and summary["world_size"] == 2 and summary["steps"] == 5
