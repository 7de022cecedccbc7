"""The 1.0611 record's side of the quality comparison: bench/ref0611.env, bench/ref0611_scores.py and its runner's resume."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REF = ROOT / ".ref0611"
sys.path.insert(0, str(ROOT / "bench"))
import ref0611_scores  # noqa: E402

# What bench/ref0611.env changes from the record's run on purpose (its part 2), and what the runner or the
# machine sets per run (paths, seed, steps, batch, EMA, ranks).
SCALE_KEYS = {"compressor", "phased_ttt_prefix_docs", "ttt_batch_size", "val_batch_tokens", "gptq_calibration_batches",
              "warmup_steps", "train_log_every", "max_wallclock_seconds"}
PER_RUN_KEYS = {"data_dir", "datasets_dir", "tokenizer_path", "train_files", "val_files", "val_bytes_files", "logfile",
                "run_id", "seed", "distributed", "world_size", "grad_accum_steps", "rank", "local_rank",
                "is_main_process", "gptq_reserve_seconds"}


def env_file() -> dict:
    lines = (ROOT / "bench" / "ref0611.env").read_text().splitlines()
    pairs = [line.split("=", 1) for line in lines if line.strip() and not line.startswith("#")]
    assert all(re.fullmatch(r"[A-Z0-9_]+", k) and v and " " not in v for k, v in pairs), pairs  # plain KEY=VALUE
    return dict(pairs)


@pytest.mark.skipif(not (REF / "record_train_seed42.log").is_file(), reason="no .ref0611/ (bench/prepare_reference.sh)")
def test_env_gives_the_records_hyperparameters_but_the_scale_knobs():
    """The script's Hyperparameters under bench/ref0611.env against those printed in the record's seed-42 log."""
    code = ("import sys; sys.path[:0] = [sys.argv[1], sys.argv[2]]; import json, train_gpt as r; "
            "h = r.Hyperparameters; print(json.dumps({k: str(v) for k, v in vars(h).items() if not k.startswith('_')}))")
    env = {k: v for k, v in os.environ.items() if k not in {"RANK", "WORLD_SIZE", "LOCAL_RANK"}}
    run = subprocess.run([sys.executable, "-c", code, str(ROOT / "bench" / "ref_shim"), str(REF)],
                         env={**env, **env_file()}, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    ours = json.loads(run.stdout.strip().splitlines()[-1])
    log = (REF / "record_train_seed42.log").read_text()
    record = dict(re.findall(r"^  (\w+): (.*)$", log[log.index("Hyperparameters:"):log.index("train_shards:")], re.M))
    assert record.keys() <= ours.keys()
    differ = {k for k in record if ours[k] != record[k]}
    # iterations, batch and EMA come from the runner (as for pgolf's side): left at the record's values here
    assert differ - PER_RUN_KEYS == SCALE_KEYS, sorted(differ - PER_RUN_KEYS)


def record_log(quantized_bpb: float, ttt_bpb: float | None, steps: int = 400) -> str:
    """The lines the record's script prints, in its format (values chosen by the test)."""
    lines = [f"{steps}/{steps} val_loss: 4.1000 val_bpb: 1.9000", "ema:applying EMA weights",
             "diagnostic pre-quantization post-ema val_loss:4.10000000 val_bpb:1.90000000 eval_time:6718ms",
             "Total submission size quantized+brotli: 4321 bytes",
             f"diagnostic quantized val_loss:4.20000000 val_bpb:{quantized_bpb:.8f} eval_time:4999ms"]
    if ttt_bpb is not None:
        lines += ["ttp: b1/50 bl:4.0 bb:1.9 rl:4.0 rb:1.9 dl:100-200 gd:1",
                  f"quantized_ttt_phased val_loss:4.15000000 val_bpb:{ttt_bpb:.8f} eval_time:61234ms",
                  "total_eval_time:61.2s"]
    return "\n".join(lines) + "\n"


def test_scores_and_gain_from_a_log():
    r = ref0611_scores.parse(record_log(1.95, 1.93))
    assert r["scores"]["quantized_full"] == {"val_loss": 4.2, "val_bpb": 1.95, "eval_seconds": 4.999}
    assert r["scores"]["quantized_ttt"]["eval_seconds"] == 61.234 and r["scores"]["prequant_full"]["val_bpb"] == 1.9
    assert r["ttt_gain_bpb"] == pytest.approx(-0.02) and r["ttt_gain_loss"] == pytest.approx(-0.05)
    assert r["steps"] == 400 and r["artifact_bytes"] == 4321


def test_a_log_cut_before_ttt_has_no_gain_and_the_command_says_so(tmp_path):
    log = tmp_path / "ref0611_s1.log"
    log.write_text(record_log(1.95, None))
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "ref0611_scores.py"), str(log), "--seed", "1",
                          "--json", str(tmp_path / "s1.json")], capture_output=True, text=True)
    assert run.returncode == 1
    written = json.loads((tmp_path / "s1.json").read_text())
    assert "ttt_gain_bpb" not in written and written["scores"]["quantized_full"]["val_bpb"] == 1.95


@pytest.mark.skipif(not (REF / "record_train_seed42.log").is_file(), reason="no .ref0611/ (bench/prepare_reference.sh)")
def test_the_records_own_seed_42_log():
    """Its README: post-quantization 1.07254, post-TTT 1.05989."""
    r = ref0611_scores.parse((REF / "record_train_seed42.log").read_text())
    assert r["scores"]["quantized_full"]["val_bpb"] == pytest.approx(1.07254, abs=5e-6)
    assert r["ttt_gain_bpb"] == pytest.approx(1.05989 - 1.07254, abs=1e-5) and r["steps"] == 4945


FAKE_RECORD = '''"""Stands in for the record's script as the runner relies on it: scores printed in its log format, the
quantized artifact written to ARTIFACT_DIR before its quantized score, TTT_EVAL_ONLY=1 loading it back."""
import os, pathlib, sys
art = pathlib.Path(os.environ["ARTIFACT_DIR"])
with open(os.environ["FAKE_CALLS"], "a") as calls:
    calls.write(os.environ["TTT_EVAL_ONLY"] + "\\n")
if os.environ["TTT_EVAL_ONLY"] != "1":
    print("1/400 train_loss: 9.0000 train_time: 0.1m tok/s: 1000")
    print("diagnostic pre-quantization post-ema val_loss:4.10000000 val_bpb:1.90000000 eval_time:1000ms")
    (art / "final_model.int6.ptz").write_bytes(b"artifact")
    print("diagnostic quantized val_loss:4.20000000 val_bpb:1.95000000 eval_time:1000ms")
    if os.environ.get("FAKE_CUT_BEFORE_TTT"):
        sys.exit(124)
(art / "final_model.int6.ptz").read_bytes()
print("quantized_ttt_phased val_loss:4.15000000 val_bpb:1.93000000 eval_time:2000ms")
'''


def test_a_record_seed_cut_before_ttt_is_only_scored_with_ttt_when_run_again(tmp_path):
    import shutil

    for name in ("quality_side_by_side.sh", "ref0611.env", "ref0611_scores.py", "quality_summary.py"):
        (tmp_path / "bench").mkdir(exist_ok=True)
        shutil.copy(ROOT / "bench" / name, tmp_path / "bench" / name)
    (tmp_path / ".ref0611").mkdir()
    (tmp_path / ".ref0611" / "run_reference.py").write_text(FAKE_RECORD)
    val = tmp_path / ".ref0611/data_caseops/datasets/fineweb10B_sp8192_lossless_caps_caseops_v1_reserved"
    val.mkdir(parents=True)
    (val / "fineweb_val_bytes_000000.bin").write_bytes(b"")
    calls, out = tmp_path / "calls.txt", tmp_path / "out"
    env = dict(os.environ, FAKE_CALLS=str(calls), PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")

    def run(**extra):
        cmd = ["bash", "bench/quality_side_by_side.sh", str(out), "1", "400", "16384", "ref0611"]
        subprocess.run(cmd, cwd=tmp_path, env={**env, **extra}, capture_output=True, text=True, timeout=120)
        return json.loads((out / "ref0611_s1.json").read_text())

    assert "ttt_gain_bpb" not in run(FAKE_CUT_BEFORE_TTT="1")
    resumed = run()
    assert calls.read_text().split() == ["0", "1"]  # trained once, then TTT only
    assert resumed["ttt_gain_bpb"] == pytest.approx(-0.02) and resumed["scores"]["prequant_full"]["val_bpb"] == 1.9
    assert (out / "ref0611_s1.train.log").is_file()
    assert run()["ttt_gain_bpb"] == pytest.approx(-0.02) and calls.read_text().split() == ["0", "1"]
