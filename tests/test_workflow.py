"""End-to-end: the whole DAG on a shrunken embedded default, then dry runs that prove the caching.

One real run (module fixture, about a minute on 2 cores) in a copy of the workflow; every other test
reads its results or asks Snakemake what it *would* do with `-n`.
"""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SUMMARY = "results/ablation_summary.tsv"

SMALL = {
    "seeds": [1, 2],
    "docs": {"num_docs": 240, "num_val_docs": 24},
    "tokenizer": {"vocab_size": 384},
    "shards": {"tokens_per_shard": 20000},
    "train": {"max_steps": 8, "batch_tokens": 2048, "log_every": 4, "hessian_batches": 2},
    "eval": {"batch_seqs": 64},
}


def merged(base: dict, changes: dict) -> dict:
    out = dict(base)
    for key, value in changes.items():
        out[key] = {**base[key], **value} if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return out


def snakemake(workdir: Path, *args: str, check: bool = True, target: str = SUMMARY) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", target, "--cores", "2", *args]
    proc = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, timeout=900)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc


def job_counts(proc: subprocess.CompletedProcess) -> dict[str, int]:
    """Parse the 'Job stats' table of a dry run (rule name, count)."""
    text = proc.stdout + proc.stderr
    if "Nothing to be done" in text:
        return {}
    table = text.split("Job stats:")[1]
    counts = dict(re.findall(r"^(\w+)\s+(\d+)\s*$", table, flags=re.M))
    counts.pop("total", None)
    return {rule: int(n) for rule, n in counts.items()}


def write_config(workdir: Path, cfg: dict, name: str) -> str:
    path = workdir / "config" / name
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return str(path.relative_to(workdir))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("wf")
    for item in ("Snakefile", "rules", "workflow", "config", "docs", "pgolf"):  # pgolf: the copy Snakemake imports
        src = ROOT / item
        (shutil.copytree if src.is_dir() else shutil.copy)(src, workdir / item)
    base = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    small = merged(base, SMALL)
    configfile = write_config(workdir, small, "small.yaml")
    proc = snakemake(workdir, "--configfile", configfile)
    (workdir / "terminal.txt").write_text(proc.stdout + proc.stderr)  # what the user saw
    return workdir, small, configfile


def test_summary_has_one_row_per_ablation_with_valid_numbers(run):
    workdir, cfg, _ = run
    summary = pd.read_csv(workdir / SUMMARY, sep="\t")
    assert sorted(summary["ablation"]) == sorted(cfg["ablations"])
    assert (summary["n_seeds"] == len(cfg["seeds"])).all()
    assert summary["fits_16mb"].all()
    assert ((summary["val_bpb_mean"] > 0) & (summary["val_bpb_mean"] < 20)).all()
    base = summary.set_index("ablation").loc["baseline"]
    assert base["delta_bpb_vs_baseline"] == 0
    # quantization can only lose information: the int5 variant is no better than its own pre-quant model
    int5 = summary.set_index("ablation").loc["quant_int5"]
    assert int5["pre_quant_bpb_mean"] == pytest.approx(base["pre_quant_bpb_mean"])
    assert pd.read_parquet(workdir / "results/ablation_summary.parquet").shape == summary.shape
    index = pd.read_csv(workdir / "results/index.tsv", sep="\t")
    assert len(index) == len(cfg["ablations"]) * len(cfg["seeds"])


def test_second_run_has_nothing_to_do(run):
    workdir, _, configfile = run
    assert job_counts(snakemake(workdir, "-n", "--configfile", configfile)) == {}


def test_quant_change_reruns_only_quantize_compress_eval_aggregate(run):
    workdir, cfg, _ = run
    changed = write_config(workdir, merged(cfg, {"quant": {**cfg["quant"], "bits": 4}}), "quant4.yaml")
    counts = job_counts(snakemake(workdir, "-n", "--configfile", changed))
    # baseline and mlp3 re-quantize; quant_int5 overrides the bits and keeps its artifacts; ttt (eval only)
    # shares the baseline's new artifacts and re-scores them
    n = 2 * len(cfg["seeds"])
    assert counts == {"quantize": n, "compress": n, "eval": n + len(cfg["seeds"]), "aggregate": 1}


def test_eval_change_reruns_only_eval_and_aggregate(run):
    workdir, cfg, _ = run
    changed = write_config(workdir, merged(cfg, {"eval": {**cfg["eval"], "stride": 32}}), "stride32.yaml")
    counts = job_counts(snakemake(workdir, "-n", "--configfile", changed))
    seeds = len(cfg["seeds"])
    # eval: baseline, quant_int5, mlp3, ttt; eval_prequant: baseline (= quant_int5's), mlp3, ttt
    assert counts == {"eval": 4 * seeds, "eval_prequant": 3 * seeds, "aggregate": 1}


def test_packed_code_change_reruns_only_compress_and_what_reads_it(run):
    """code_bytes describe the code that is packed: a code change in a packed module re-runs compress;
    a comment (not packed) changes nothing."""
    workdir, _, configfile = run
    module = workdir / "pgolf" / "gptq.py"
    original = module.read_text()
    artifacts = list((workdir / "results" / "artifact").glob("*/seed*/artifact.json"))
    try:
        module.write_text(original + "\n\ndef packed_helper():\n    return 1\n")
        counts = job_counts(snakemake(workdir, "-n", "--configfile", configfile))
        assert counts["compress"] == len(artifacts) > 0
        assert not {"train", "quantize", "eval_prequant"} & set(counts)
        module.write_text(original + "\n# a comment is not packed\n")
        assert job_counts(snakemake(workdir, "-n", "--configfile", configfile)) == {}
    finally:
        module.write_text(original)


def test_train_jobs_never_read_validation_shards(run):
    workdir, _, configfile = run
    proc = snakemake(workdir, "-n", "--forceall", "--configfile", configfile)
    blocks = re.findall(r"rule train:\n(.*?)(?:\n\n|\Z)", proc.stdout, flags=re.S)
    assert blocks, "dry run printed no train job"
    for block in blocks:
        inputs = re.search(r"input: (.*)", block).group(1)
        assert "/train" in inputs and "/val" not in inputs and "docs.jsonl" not in inputs


def test_malformed_config_stops_before_any_job_naming_the_key(run):
    workdir, cfg, _ = run
    bad = write_config(workdir, merged(cfg, {"quant": {**cfg["quant"], "bitz": 5}}), "bad.yaml")
    proc = snakemake(workdir, "-n", "--configfile", bad, check=False)
    assert proc.returncode != 0
    assert "bitz" in proc.stderr + proc.stdout
    assert "Job stats" not in proc.stdout


def test_a_number_yaml_reads_as_text_stops_the_workflow_saying_how_to_write_it(run):
    workdir, cfg, _ = run
    bad = write_config(workdir, merged(cfg, {"eval": {"ttt_lr": "1e-4"}}), "bad_number.yaml")  # as YAML reads 1e-4
    proc = snakemake(workdir, "-n", "--configfile", bad, check=False)
    assert proc.returncode != 0
    assert "key 'eval.ttt_lr': '1e-4' is not of type 'number' (YAML reads 1e-4 as text: write 0.0001)" in proc.stdout + proc.stderr
    assert "Job stats" not in proc.stdout


def test_corrupt_shard_fails_the_job_with_the_file_named_and_no_partial_output(run):
    workdir, cfg, configfile = run
    train_dirs = sorted((workdir / "results" / "shards").glob("*/train"))
    shard = sorted(train_dirs[0].glob("*.bin"))[0]
    original = shard.read_bytes()
    try:
        shard.write_bytes(b"\x00" * 4 + original[4:])  # wrong magic
        proc = snakemake(workdir, "--configfile", configfile, "--forcerun", "train",
                         "--until", "train", check=False)
        assert proc.returncode != 0
        failed = [log for log in (workdir / "results/logs/train").glob("*.log") if shard.name in log.read_text()]
        assert failed, "no train log names the corrupt shard"
        assert "magic" in failed[0].read_text().lower()
        train_key, seed = re.fullmatch(r"(\w+)_seed(\d+)\.log", failed[0].name).groups()
        assert not list((workdir / "results/train" / train_key / f"seed{seed}").glob("*")), "partial outputs left"
    finally:
        shard.write_bytes(original)


def test_report_carries_every_figure_with_its_caption_and_the_summary(run):
    from pgolf.figures import FIGURES

    workdir, _, configfile = run
    for name in FIGURES:
        assert (workdir / "results" / "figures" / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
    snakemake(workdir, "--report", "report.html", "--configfile", configfile)
    html = (workdir / "report.html").read_text()
    for name in FIGURES:
        assert f"{name}.png" in html
        first_words = " ".join((ROOT / "docs" / "report" / f"{name}.rst").read_text().split()[:4])
        assert first_words in html, f"caption of {name} missing"
    assert "ablation_summary.tsv" in html


def test_the_terminal_shows_docs_bar_and_training_progress(run):
    workdir, cfg, _ = run
    terminal = (workdir / "terminal.txt").read_text()
    assert re.search(r"docs: 100%\|.*\| 240/240", terminal)  # the docs stage's bar
    steps = cfg["train"]["max_steps"]
    assert re.search(rf"training \w+_seed1: step {steps}/{steps} loss [0-9.]+, [0-9.]+ ms/step, ETA 0:00:00", terminal)


# --- an external training script as a cell (pgolf.external); these rewrite the summary, so they come last ---

EXTERNAL_SCRIPT = "tests/data/external_train_gpt.py"


def with_external(workdir: Path, cfg: dict, name: str, grids: dict, only=None) -> str:
    """The run's config plus grids of external cells, the test script copied into the workflow copy."""
    (workdir / "tests" / "data").mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / EXTERNAL_SCRIPT, workdir / EXTERNAL_SCRIPT)
    return write_config(workdir, {**cfg, "grids": grids, "only": only}, name)


def test_external_script_cells_join_the_summary_beside_pgolfs_baseline(run):
    workdir, cfg, _ = run
    grid = {"script": {"external.script": [EXTERNAL_SCRIPT], "external.env": [{"ITERATIONS": 5}, {"ITERATIONS": 10}]}}
    configfile = with_external(workdir, cfg, "external.yaml", grid)
    planned = job_counts(snakemake(workdir, "-n", "--configfile", configfile))
    assert planned["external"] == 2 * len(cfg["seeds"]) and "shards" not in planned  # the same data as pgolf's
    snakemake(workdir, "--configfile", configfile)
    assert job_counts(snakemake(workdir, "-n", "--configfile", configfile)) == {}
    summary = pd.read_csv(workdir / SUMMARY, sep="\t").set_index("ablation")
    cells = [name for name in summary.index if name.startswith("script__")]
    assert len(cells) == 2 and "baseline" in summary.index
    script_bytes = (ROOT / EXTERNAL_SCRIPT).stat().st_size
    for name in cells:
        row = summary.loc[name]
        assert row["script_eval"] and row["score_line"] == "int8_zlib_roundtrip"
        assert "script_eval: int8_zlib_roundtrip" in row["flags"]
        assert row["n_seeds"] == len(cfg["seeds"]) and 1.0 < row["val_bpb_mean"] < 20.0
        assert row["code_bytes"] == script_bytes and row["artifact_bytes_max"] > script_bytes
        assert not pd.isna(row["p_welch_vs_baseline"]) and not pd.isna(row["delta_bpb_vs_baseline"])
        assert row["gate_tflops_min"] > 0 and row["torch_version"] == summary.loc["baseline", "torch_version"]
    assert summary.loc[cells, "steps_mean"].tolist() == [5.0, 10.0]
    assert not summary.loc["baseline", "script_eval"]
    key = summary.loc[cells[0], "key_external"]
    seed = cfg["seeds"][0]
    run_json = json.loads((workdir / f"results/external/{key}/seed{seed}/external.json").read_text())
    log = (workdir / f"results/external/{key}/seed{seed}/train.log").read_text()
    assert f"final_int8_zlib_roundtrip_exact val_loss:{run_json['val_loss']:.8f} val_bpb:{run_json['val_bpb']:.8f}" in log


def test_crashing_or_scoreless_script_fails_its_job_with_a_message_and_no_outputs(run):
    workdir, cfg, _ = run
    grid = {"bad": {"external.script": [EXTERNAL_SCRIPT], "external.env": [{"CRASH_AT_STEP": 2}, {"SKIP_FINAL_EVAL": 1}]}}
    configfile = with_external(workdir, cfg, "bad.yaml", grid)
    proc = snakemake(workdir, "--configfile", configfile, "--keep-going", check=False)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert re.search(r"pgolf: external script \S+ failed \(exit \d+\): RuntimeError: CUDA error", text)
    assert re.search(r"pgolf: external script \S+ printed no score", text)
    failed = re.findall(r"results/external/(\w+)/seed(\d+)/external\.json", text)
    assert failed
    for key, seed in failed:
        leftovers = list((workdir / "results/external" / key / f"seed{seed}").glob("*"))
        assert not leftovers, f"partial outputs left: {leftovers}"


# --- submission export (pgolf.submission) ---

# The fields most of the challenge's records/track_10min_16mb/*/submission.json carry, with their types;
# seed_results entries as the 2026-04-27 record gives them.
RECORD_FIELDS = {"author": (str, type(None)), "github_id": (str, type(None)), "name": str, "blurb": (str, type(None)),
                 "date": str, "track": str, "val_loss": float, "val_bpb": float, "val_loss_std": float,
                 "val_bpb_std": float, "seeds": list, "seed_results": dict, "bytes_total": int, "bytes_code": int,
                 "hardware": str, "pytorch_version": str}
SEED_RESULT_FIELDS = {"val_loss", "val_bpb", "artifact_bytes", "steps", "step_avg_ms", "eval_time_s"}


def challenge_data_dir(workdir: Path, root: Path, vocab_size: int) -> Path:
    """The challenge's data/ layout (datasets/fineweb10B_sp<V>/, tokenizers/) as links to the run's files."""
    datasets = root / "datasets" / f"fineweb10B_sp{vocab_size}"
    datasets.mkdir(parents=True)
    for split in ("train", "val"):
        for shard in sorted((workdir / "results/shards").glob(f"*/{split}/*.bin")):
            (datasets / shard.name).symlink_to(shard)
    (root / "tokenizers").mkdir()
    tokenizer = next((workdir / "results/tokenizer").glob("*/tokenizer.model"))
    (root / "tokenizers" / f"fineweb_{vocab_size}_bpe.model").symlink_to(tokenizer)
    return root


def test_submission_folder_has_the_records_layout_and_fields(run):
    workdir, cfg, configfile = run
    snakemake(workdir, "--configfile", configfile, target="results/submission/baseline/submission.json")
    folder = workdir / "results/submission/baseline"
    seeds = cfg["seeds"]
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["README.md", "submission.json", "train_gpt.py", *(f"train_seed{s}.log" for s in seeds)])
    sub = json.loads((folder / "submission.json").read_text())
    for field, kind in RECORD_FIELDS.items():
        assert isinstance(sub[field], kind), f"submission.json {field}: {sub[field]!r}"
    assert sub["seeds"] == seeds and sub["track"] == "10min_16mb" and sub["name"] == "baseline"
    assert all(set(r) == SEED_RESULT_FIELDS for r in sub["seed_results"].values())
    assert sub["bytes_code"] == (folder / "train_gpt.py").stat().st_size
    summary = pd.read_csv(workdir / SUMMARY, sep="\t").set_index("ablation").loc["baseline"]
    assert sub["val_bpb"] == pytest.approx(summary["val_bpb_mean"]) and sub["val_bpb_std"] == pytest.approx(summary["val_bpb_std"])
    readme = (folder / "README.md").read_text()
    assert all(f"| {s} |" in readme for s in seeds) and "reference" in readme
    assert "quantized_sliding_window val_loss:" in (folder / f"train_seed{seeds[0]}.log").read_text()


def test_exported_train_gpt_alone_reproduces_the_pipelines_val_bpb(run, tmp_path):
    workdir, cfg, configfile = run
    folder = workdir / "results/submission/baseline"
    if not folder.exists():
        snakemake(workdir, "--configfile", configfile, target="results/submission/baseline/submission.json")
    seed = cfg["seeds"][0]
    empty = tmp_path / "elsewhere"
    empty.mkdir()
    shutil.copy(folder / "train_gpt.py", empty / "train_gpt.py")
    data = challenge_data_dir(workdir, tmp_path / "data", cfg["tokenizer"]["vocab_size"])
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # nothing of the checkout on the path
    env.update(SEED=str(seed), RUN_ID="repro", DATA_DIR=str(data), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", "train_gpt.py"]
    proc = subprocess.run(cmd, cwd=empty, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    got = float(re.search(r"^quantized_sliding_window val_loss:\S+ val_bpb:(\S+)", proc.stdout, flags=re.M)[1])
    index = pd.read_csv(workdir / "results/index.tsv", sep="\t").set_index(["ablation", "seed"])
    eval_json = json.loads((workdir / index.loc[("baseline", seed), "eval_json"]).read_text())
    assert got == pytest.approx(eval_json["val_bpb"], rel=1e-6)
    assert (empty / "logs" / "repro.txt").is_file() and (empty / "final_model.pgolf.ptz").is_file()
