import json

import pytest
import torch

from pgolf.gate import GateError, check, failures, measure
from pgolf.launch import TRAIN_FILES, run_train
from test_train import TINY

NO_FLOOR = {"min_tflops": None, "min_gbps": None}


def test_cpu_figures_are_positive_and_plausible():
    m = measure(torch.device("cpu"))
    assert m["device"] == "cpu" and m["dtype"] == "float32"
    assert 1e-5 < m["tflops"] < 100 and 0.01 < m["gbps"] < 10_000


def test_failures_name_each_slow_device_and_figure():
    measured = [{"device": "cuda:0", "name": "NVIDIA H100 80GB HBM3", "dtype": "bfloat16", "tflops": 650.0, "gbps": 2900.0},
                {"device": "cuda:3", "name": "NVIDIA H100 80GB HBM3", "dtype": "bfloat16", "tflops": 150.0, "gbps": 2900.0}]
    assert failures(measured, None, None) == []
    (line,) = failures(measured, 196, 2000)
    assert line.startswith("cuda:3 (NVIDIA H100 80GB HBM3): bfloat16 GEMM 150.00 TFLOP/s < gate.min_tflops 196")
    with pytest.raises(GateError, match="cuda:3 .* Retry on another machine"):
        check({"devices": measured, "min_tflops": 196, "min_gbps": None})


def launch(tiny_corpus, tmp_path, gate):
    outputs = {name: tmp_path / "out" / name for name in TRAIN_FILES}
    run_train(dict(TINY, max_steps=2), tiny_corpus.train_dir, tiny_corpus.tokenizer_model, 1, outputs,
              tmp_path / "stage.log", nproc=1, threads=1, gate=gate)
    return outputs


def test_the_figures_land_in_train_json(tiny_corpus, tmp_path):
    outputs = launch(tiny_corpus, tmp_path, NO_FLOOR)
    gate = json.loads(outputs["train.json"].read_text())["gate"]
    (cpu,) = gate["devices"]
    assert cpu["device"] == "cpu" and cpu["tflops"] > 0 and cpu["gbps"] > 0
    assert f"gate: cpu (cpu) {cpu['tflops']:.2f} TFLOP/s" in (tmp_path / "stage.log").read_text()


@pytest.mark.parametrize("floor", [{"min_tflops": 1e6}, {"min_gbps": 1e9}], ids=["tflops", "gbps"])
def test_a_floor_above_the_machine_fails_the_job_at_once_naming_the_device(tiny_corpus, tmp_path, floor):
    with pytest.raises(GateError, match=r"GPU gate: cpu \(cpu\): .* < gate\.min_"):
        launch(tiny_corpus, tmp_path, dict(NO_FLOOR, **floor))
    log = (tmp_path / "stage.log").read_text()
    assert "pgolf.train" not in log  # training never started
    assert not list((tmp_path / "out").iterdir()) and not list(tmp_path.glob(".train.*"))  # nothing left behind
