import io

from pgolf.progress import Reporter, eval_progress, train_progress

# A line exactly as pgolf.train logs it, and a redraw exactly as tqdm draws pgolf.evaluate's bar.
TRAIN = "step 50/150 loss 3.2100 lr_scale 1.000 step_ms 12.5 tokens_per_s 327680 elapsed_s 0.700"
EVAL = "eval:  45%|████▌     | 9/20 [00:03<00:04,  2.90batch/s]"


def test_train_line_gives_loss_step_time_and_the_nearer_eta():
    assert train_progress(TRAIN, 600.0) == "step 50/150 loss 3.2100, 12.5 ms/step, ETA 0:00:01"
    # 100 steps x 12.5 ms = 1.25 s, but only 0.3 s of the budget is left
    assert train_progress(TRAIN, 1.0) == "step 50/150 loss 3.2100, 12.5 ms/step, ETA 0:00:00"
    slow = TRAIN.replace("step_ms 12.5", "step_ms 4000.0")
    assert train_progress(slow, 1e6).endswith("ETA 0:06:40")
    assert train_progress("hessians: 4 matrices", 600.0) is None
    # rank 0's tqdm bar (stderr) and the log line (stdout) can share a line
    assert train_progress("train:   0%|          | 0/10 [00:00<?, ?it/s]" + TRAIN, 600.0).startswith("step 50/150")


def test_eval_bar_gives_percentage_and_eta():
    assert eval_progress(EVAL) == "eval 45% (9/20 batches), ETA 00:04"
    assert eval_progress("eval:   3%|▏    | 1/34 [00:01<00:40,  1.13s/batch]") == "eval 3% (1/34 batches), ETA 00:40"
    ttt_bar = "eval:  45%|████▌     | 189000/420000 [00:30<00:37, 6300.00tok/s]"  # pgolf.ttt: scored tokens
    assert eval_progress(ttt_bar) == "eval 45% (189000/420000 tokens, 6300 tokens/s), ETA 00:37"
    assert eval_progress("train:  10%|#  | 15/150 [00:01<00:09]") is None


def test_reporter_prefixes_the_job_and_throttles_but_keeps_the_last_line():
    out = io.StringIO()
    report = Reporter("training abc_seed1", 600.0, out)
    report(TRAIN)
    report(TRAIN.replace("step 50/150", "step 75/150"))  # within the interval: dropped
    report("some other output")
    report(TRAIN.replace("step 50/150", "step 150/150"))  # the last step always shows
    lines = out.getvalue().splitlines()
    assert lines == ["training abc_seed1: step 50/150 loss 3.2100, 12.5 ms/step, ETA 0:00:01",
                     "training abc_seed1: step 150/150 loss 3.2100, 12.5 ms/step, ETA 0:00:00"]


def test_a_train_job_shows_its_steps_on_stderr(tiny_corpus, tmp_path, capsys):
    from pgolf.launch import TRAIN_FILES, run_train
    from test_train import TINY

    outputs = {name: tmp_path / name for name in TRAIN_FILES}
    run_train(dict(TINY, max_steps=10, log_every=5), tiny_corpus.train_dir, tiny_corpus.tokenizer_model, 1, outputs,
              tmp_path / "job.log", nproc=1, threads=1)
    err = capsys.readouterr().err
    assert "training job: step 5/10 loss " in err and "training job: step 10/10 loss " in err
    assert "step 10/10 loss" in (tmp_path / "job.log").read_text()  # the log still has everything
