"""An external training script as a cell: log patterns on the records' own lines, and real runs of a small
script (tests/data/external_train_gpt.py) on the tiny corpus under torchrun."""
import json
import re
from pathlib import Path

import pytest
import torch

import pgolf.external as external
from pgolf.config import section_defaults
from pgolf.gate import GateError
from pgolf.external import (ExternalScriptError, SCORE_PATTERNS, canonical_score, config_errors, parse_scores,
                            parse_training, run_external)

SCRIPT = Path(__file__).resolve().parent / "data" / "external_train_gpt.py"

# Lines as the challenge's records print them (one log per family of formats).
INT8_LOG = """\
step:13780/20000 val_loss:2.0606 val_bpb:1.2172 train_time:600038ms step_avg:43.54ms
stopping_early: wallclock_cap train_time:600038ms step:13780/20000
Total submission size int8+zlib: 15863489 bytes
final_int8_zlib_roundtrip val_loss:2.0727 val_bpb:1.2244 eval_time:1398ms
final_int8_zlib_roundtrip_exact val_loss:2.07269931 val_bpb:1.22436570
"""
TTT_LOG = """\
4000/20000 train_loss: 2.9557 train_time: 7.5m tok/s: 6991397
4557/20000 val_loss: 2.8129 val_bpb: 1.0889
stopping_early: wallclock_cap train_time: 588119ms step: 4557/20000
pre-quantization post-ema val_loss:2.80977929 val_bpb:1.08775313 eval_time:7438ms
Total submission size quantized+brotli: 15992919 bytes
quantized val_loss:2.84004242 val_bpb:1.09946892 eval_time:25390ms
quantized_sliding_window val_loss:2.79676256 val_bpb:1.08271394 eval_time:121183ms
quantized_ttt val_loss:2.79241542 val_bpb:1.08103103 eval_time:368074ms
"""
INT6_LOG = """\
final_int6_roundtrip_exact val_loss:1.95000000 val_bpb:1.15500000
final_int6_sliding_window val_loss:1.9200 val_bpb:1.1370 stride:64 eval_time:70000ms
final_int6_sliding_window_exact val_loss:1.92000123 val_bpb:1.13700456
diagnostic quantized val_loss:2.35060987 val_bpb:1.07406724 eval_time:11612ms
quantized_ttt_phased val_loss:2.32239991 val_bpb:1.06124613 eval_time:455128ms
"""


def test_score_patterns_read_every_family_of_record_lines():
    by_name = lambda log: {name: bpb for _, name, _, bpb in parse_scores(log, SCORE_PATTERNS)}  # noqa: E731
    assert by_name(INT8_LOG) == {"int8_zlib_roundtrip": 1.22436570}
    assert by_name(TTT_LOG) == {"quantized": 1.09946892, "sliding_window": 1.08271394, "ttt": 1.08103103}
    assert by_name(INT6_LOG) == {"quantized": 1.07406724, "sliding_window": 1.13700456, "ttt": 1.06124613}


def test_canonical_score_is_the_configured_line_or_the_last_one():
    scores = parse_scores(TTT_LOG, SCORE_PATTERNS)
    assert canonical_score(scores, "last") == ("ttt", 2.79241542, 1.08103103)
    assert canonical_score(scores, "sliding_window") == ("sliding_window", 2.79676256, 1.08271394)
    assert canonical_score(parse_scores(INT8_LOG, SCORE_PATTERNS), "ttt") is None


def test_training_figures_from_both_log_formats():
    old = parse_training(INT8_LOG)
    assert old["steps"] == 13780 and old["train_seconds"] == pytest.approx(600.038)
    assert old["step_ms"] == 43.54  # the script's own step_avg
    assert parse_training(TTT_LOG)["step_ms"] == pytest.approx(588119 / 4557)
    cut = "step:13600/20000 train_loss:2.1 train_time:592000ms\nstopping_early: wallclock_cap train_time:600038ms step:13780/20000"
    assert parse_training(cut)["steps"] == 13780  # the wall clock stopped it between two logged steps
    assert old["reported_total_bytes"] == 15863489 and old["pre_quant_bpb"] == 1.2172
    new = parse_training(TTT_LOG)
    assert new["steps"] == 4557 and new["train_seconds"] == pytest.approx(588.119)
    assert new["tokens_per_second"] == 6991397 and new["pre_quant_bpb"] == 1.08775313


def test_config_errors_name_the_key():
    external = section_defaults("external")
    assert config_errors(external) == []
    errors = config_errors({**external, "env": {"SEED": 3, "ITERATIONS": 5}, "score": "nope",
                            "patterns": {"mine": r"^x val_loss:(\S+)"}})
    assert any("external.env.SEED" in e for e in errors)
    assert any("external.score 'nope'" in e for e in errors)
    assert any("external.patterns.mine" in e and "val_bpb" in e for e in errors)


@pytest.fixture(autouse=True)
def in_tmp_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


def _run(tiny_corpus, where="out", env=None, script=SCRIPT, gate=None, **overrides):
    """One seed of the test script; output paths relative to the working directory, as Snakemake gives them."""
    external = {**section_defaults("external"), "script": str(script), "env": {"ITERATIONS": 10, **(env or {})},
                **overrides}
    out = Path(where)
    outputs = {"json": out / "external.json", "log": out / "train.log", "artifact_dir": out / "artifact"}
    data = {"train_dir": tiny_corpus.train_dir, "val_dir": tiny_corpus.val_dir, "tokenizer": tiny_corpus.tokenizer_model,
            "vocab_size": tiny_corpus.vocab_size}
    summary = run_external(external, 60.0, data, seed=7, run_id="cell_seed7", outputs=outputs, nproc=1, device="cpu",
                           threads=1, log_path=Path("job.log"), gate=gate)
    return summary, outputs


def test_script_runs_on_the_dags_data_and_its_scores_and_bytes_are_collected(tiny_corpus):
    summary, outputs = _run(tiny_corpus)
    log = outputs["log"].read_text()
    exact = re.search(r"final_int8_zlib_roundtrip_exact val_loss:(\S+) val_bpb:(\S+)", log)
    assert summary["score_line"] == "int8_zlib_roundtrip"
    assert (summary["val_loss"], summary["val_bpb"]) == (float(exact[1]), float(exact[2]))
    assert 1.0 < summary["val_bpb"] < 10.0 and summary["steps"] == 10
    artifact = outputs["artifact_dir"] / "final_model.int8.ptz"
    assert summary["model_bytes"] == artifact.stat().st_size
    assert summary["code_bytes"] == SCRIPT.stat().st_size
    assert summary["total_bytes"] == summary["reported_total_bytes"] == summary["model_bytes"] + summary["code_bytes"]
    assert summary["env"]["SEED"] == "7" and summary["env"]["VOCAB_SIZE"] == str(tiny_corpus.vocab_size)
    assert summary["env"]["MAX_WALLCLOCK_SECONDS"] == "60.0" and summary["env"]["ITERATIONS"] == "10"
    written = json.loads(outputs["json"].read_text())
    assert written["val_bpb"] == summary["val_bpb"]
    assert written["provenance"]["torch_version"] == torch.__version__ and "git_commit" in written["provenance"]
    assert not list(outputs["json"].parent.glob(".external.*")), "scratch directory left behind"


def test_same_settings_same_score_other_settings_other_score(tiny_corpus):
    first, _ = _run(tiny_corpus, "a")
    again, _ = _run(tiny_corpus, "b")
    assert first["val_bpb"] == again["val_bpb"]  # same seed: same run
    other, _ = _run(tiny_corpus, "c", env={"TRAIN_BATCH_TOKENS": 512})
    assert other["val_bpb"] != first["val_bpb"]


@pytest.mark.parametrize("env, message", [({"CRASH_AT_STEP": 3}, r"failed \(exit \d+\)[\s\S]*illegal memory access"),
                                          ({"SKIP_FINAL_EVAL": 1}, r"printed no score")])
def test_a_crash_or_a_missing_score_fails_with_a_message_and_leaves_nothing(tiny_corpus, env, message):
    with pytest.raises(ExternalScriptError, match=message):
        _run(tiny_corpus, env=env)
    assert not list(Path("out").iterdir())


def test_no_artifact_file_fails_naming_the_key(tiny_corpus):
    with pytest.raises(ExternalScriptError, match=r"external\.artifact 'model\.bin'"):
        _run(tiny_corpus, artifact="model.bin")
    assert not list(Path("out").iterdir())


def test_the_gate_times_the_devices_first_and_a_slow_one_fails_before_the_script(tiny_corpus, monkeypatch):
    summary, outputs = _run(tiny_corpus, gate={"min_tflops": None, "min_gbps": None})
    device = json.loads(outputs["json"].read_text())["gate"]["devices"][0]
    assert device["device"] == "cpu" and device["tflops"] > 0 and device["gbps"] > 0
    monkeypatch.setattr(external, "run_script", lambda *a, **k: pytest.fail("the script ran past the gate"))
    with pytest.raises(GateError, match=r"cpu \(cpu\): .* < gate\.min_tflops"):
        _run(tiny_corpus, where="slow", gate={"min_tflops": 1e6, "min_gbps": None})
    assert not Path("slow").exists() or not any(Path("slow").iterdir())  # nothing of the run left
