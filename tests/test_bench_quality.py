"""bench/quality.py: a second run on the same OUT resumes, training nothing and scoring only what is missing."""
import json

import pytest
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import quality  # noqa: E402


def data_dir(root: Path) -> Path:
    shards = root / "datasets" / "fineweb10B_sp8192"
    shards.mkdir(parents=True)
    for name in ("fineweb_train_000000.bin", "fineweb_val_000000.bin"):
        (shards / name).write_bytes(b"")
    return root


def run_main(monkeypatch, out: Path, data: Path, *flags: str) -> tuple[list, list]:
    """quality.main with training and scoring faked; returns (seeds trained, eval output files)."""
    trained, scored = [], []

    def fake_train(a, cfg, out, train_dir, tokenizer):
        run = out / "run"
        run.mkdir(parents=True, exist_ok=True)
        (run / "train.json").write_text(json.dumps({"steps": 4, "final_train_loss": 5.0, "train_seconds": 1.0}))
        art = {"model_bytes": 10, "code_bytes": 2, "total_bytes": 12}
        (run / "artifact.json").write_text(json.dumps(art))
        trained.append(a.seed)
        return art

    def fake_eval(mode, path, val_dir, tokenizer, ev, device, out_json):
        scored.append(Path(out_json).name)
        return {"val_loss": 4.0, "val_bpb": 2.0, "eval_seconds": 1.0}

    monkeypatch.setattr(quality, "train_and_compress", fake_train)
    monkeypatch.setattr("pgolf.evaluate.evaluate_files", fake_eval)
    monkeypatch.setattr(sys, "argv", ["quality.py", "--out", str(out), "--seed", "1", "--data", str(data),
                                      "--device", "cpu", "--no-sliding", *flags])
    assert quality.main() == 0
    return trained, scored


def test_a_second_run_trains_nothing_and_scores_only_what_is_missing(tmp_path, monkeypatch):
    data, out = data_dir(tmp_path / "data"), tmp_path / "out"
    assert run_main(monkeypatch, out, data) == ([1], ["eval_prequant_full.json", "eval_quantized_full.json"])
    assert run_main(monkeypatch, out, data, "--ttt") == ([], ["eval_quantized_ttt.json"])
    assert run_main(monkeypatch, out, data, "--ttt") == ([], [])
    scores = json.loads((out / "quality.json").read_text())["scores"]
    assert sorted(scores) == ["prequant_full", "quantized_full", "quantized_ttt"]


def test_a_score_made_with_other_overrides_is_made_again_and_other_training_is_refused(tmp_path, monkeypatch):
    data, out = data_dir(tmp_path / "data"), tmp_path / "out"
    run_main(monkeypatch, out, data, "--ttt")
    assert run_main(monkeypatch, out, data, "--ttt", "--ttt-set", "ttt_lr=0.001") == ([], ["eval_quantized_ttt.json"])
    assert run_main(monkeypatch, out, data, "--ttt", "--ttt-set", "ttt_lr=0.001") == ([], [])
    with pytest.raises(SystemExit, match="trained with other settings"):
        run_main(monkeypatch, out, data, "--steps", "20")


def test_a_ttt_score_made_under_another_ttt_ablation_is_made_again(tmp_path, monkeypatch):
    """The config's ttt ablation changed since the score was made (here: its stored alpha differs)."""
    data, out = data_dir(tmp_path / "data"), tmp_path / "out"
    run_main(monkeypatch, out, data, "--ttt")
    result = json.loads((out / "quality.json").read_text())
    result["scores"]["quantized_ttt"]["settings"]["ttt"]["ttt_lora_alpha"] = 1.0
    (out / "quality.json").write_text(json.dumps(result))
    assert run_main(monkeypatch, out, data, "--ttt") == ([], ["eval_quantized_ttt.json"])
    assert run_main(monkeypatch, out, data, "--ttt") == ([], [])


def test_a_bad_override_is_named_before_anything_is_trained(tmp_path, monkeypatch):
    """YAML 1.1 reads 1e-12 as text: the run stops naming the key and how to write it, not inside the optimizer."""
    data, out = data_dir(tmp_path / "data"), tmp_path / "out"
    with pytest.raises(SystemExit, match=r"key 'ttt_lr': '1e-12' is not of type 'number' .*write 1\.0e-12"):
        run_main(monkeypatch, out, data, "--ttt", "--ttt-set", "ttt_lr=1e-12")
    assert not (out / "run").exists()
