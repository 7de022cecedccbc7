"""An external training script (e.g. a record's train_gpt.py) as a cell of the grid.

The script runs under torchrun in a scratch directory, with the challenge's environment variables
pointed at the DAG's own shards and tokenizer. Its scores come from its log (it evaluates itself, so
its rows are flagged `script_eval`), its artifact bytes from the files it wrote plus its own code.
Nothing reaches the rule's outputs unless the script exited cleanly and printed the canonical score.
"""
from __future__ import annotations

import math
import re
import shutil
import subprocess
import time
from pathlib import Path

from pgolf import io
from pgolf.gpus import Placement
from pgolf.launch import CPU_JOB, REPO_ROOT, launch_env, run_gate, torchrun_prefix
from pgolf.provenance import collect

# Score lines of the records' logs, by family; each also matches its `_exact` twin, printed later with
# more digits, so the last match of a pattern is its most precise value.
_NUMBERS = r"(?: stride:\d+)? val_loss[:=]\s*(?P<val_loss>\d+\.\d+) val_bpb[:=]\s*(?P<val_bpb>\d+\.\d+)"
SCORE_PATTERNS: dict[str, str] = {
    "int8_zlib_roundtrip": r"^final_int8_zlib_roundtrip(?:_exact)?" + _NUMBERS,
    "quantized": r"^(?:diagnostic )?(?:quantized|final_int\d+_roundtrip(?:_exact)?)" + _NUMBERS,
    "sliding_window": r"^(?:quantized_sliding_window|final_(?:int\d+_)?sliding_window(?:_eval)?(?:_exact)?)" + _NUMBERS,
    "ttt": r"^(?:quantized_ttt\w*|legal_ttt(?:_exact)?|ttt_sliding:done)" + _NUMBERS,
}
# The unquantized model's score: the pre-quantization line, else the last periodic validation.
PREQUANT_PATTERNS = (r"^(?:diagnostic )?pre-quantization post-ema" + _NUMBERS,
                     r"^(?:step:)?\d+/\d+" + _NUMBERS)
STEP_RE = re.compile(r"^(?:step:)?(\d+)/\d+ |^stopping_early:.* step:\s*(\d+)/")
TRAIN_TIME_RE = re.compile(r"train_time:\s*(\d+(?:\.\d+)?)(ms|m)\b")
STEP_AVG_RE = re.compile(r"step_avg:\s*(\d+(?:\.\d+)?)ms")
TOKENS_PER_SECOND_RE = re.compile(r"tok/s:\s*(\d+(?:\.\d+)?)")
ERROR_LINE_RE = re.compile(r"^[\w.]*(?:Error|Exception|Interrupt)\b")
REPORTED_TOTAL_RE = re.compile(r"^Total submission size[^:]*:\s*(\d+) bytes")
# Set from the DAG (and train.max_wallclock_seconds), never from external.env.
DAG_VARIABLES = ("DATA_DIR", "DATA_PATH", "TOKENIZER_PATH", "VOCAB_SIZE", "SEED", "RUN_ID", "MAX_WALLCLOCK_SECONDS")


class ExternalScriptError(RuntimeError):
    """The script failed, printed no canonical score, or wrote no artifact."""


def config_errors(external: dict) -> list[str]:
    """Cross-key rules of the `external` section."""
    errors = [f"external.env.{name} is set from the DAG (README: 'A record's script as a cell'); remove it"
              for name in external.get("env", {}) if name in DAG_VARIABLES]
    score = external.get("score", "last")
    known = {**SCORE_PATTERNS, **external.get("patterns", {})}
    if score != "last" and score not in known:
        errors.append(f"external.score {score!r} is not a pattern name (have: last, {', '.join(known)})")
    for name, pattern in external.get("patterns", {}).items():
        try:
            groups = re.compile(pattern).groupindex
        except re.error as err:
            errors.append(f"external.patterns.{name}: not a regular expression ({err})")
            continue
        if not {"val_loss", "val_bpb"} <= set(groups):
            errors.append(f"external.patterns.{name}: needs named groups val_loss and val_bpb")
    return errors


# --- reading the log ---------------------------------------------------------------------------------

def _last_match(lines: list[str], pattern: str) -> re.Match | None:
    regex = re.compile(pattern)
    found = None
    for line in lines:
        found = regex.search(line) or found
    return found


def parse_scores(text: str, patterns: dict[str, str]) -> list[tuple[int, str, float, float]]:
    """Every score line as (line number, pattern name, val_loss, val_bpb), in log order."""
    compiled = {name: re.compile(p) for name, p in patterns.items()}
    scores = []
    for number, line in enumerate(text.splitlines()):
        for name, regex in compiled.items():
            if m := regex.search(line):
                scores.append((number, name, float(m["val_loss"]), float(m["val_bpb"])))
                break
    return scores


def canonical_score(scores: list[tuple[int, str, float, float]], score: str) -> tuple[str, float, float] | None:
    """(pattern name, val_loss, val_bpb) of the canonical line: the last of pattern `score`, or the last of all;
    None when there is no such line."""
    chosen = [s for s in scores if score == "last" or s[1] == score]
    if not chosen:
        return None
    _, name, val_loss, val_bpb = chosen[-1]
    return name, val_loss, val_bpb


def parse_training(text: str) -> dict:
    """Steps, training time (the script's own clock), step time, tokens/s, self-reported total bytes."""
    lines = text.splitlines()
    steps = [int(m[1] or m[2]) for line in lines if (m := STEP_RE.match(line))]
    times = [float(m[1]) * (1.0 if m[2] == "ms" else 60_000.0) for line in lines for m in TRAIN_TIME_RE.finditer(line)]
    step_avg = _last_match(lines, STEP_AVG_RE.pattern)
    rate = _last_match(lines, TOKENS_PER_SECOND_RE.pattern)
    total = _last_match(lines, REPORTED_TOTAL_RE.pattern)
    prequant = next((m for p in PREQUANT_PATTERNS if (m := _last_match(lines, p))), None)
    step_count = max(steps, default=0)
    train_ms = times[-1] if times else math.nan
    return {
        "steps": step_count,
        "train_seconds": train_ms / 1000.0,
        # the script's own average when it prints one (finer than train_time, which is rounded to ms or 0.1 min)
        "step_ms": float(step_avg[1]) if step_avg else (train_ms / step_count if step_count else math.nan),
        "tokens_per_second": float(rate[1]) if rate else math.nan,
        "reported_total_bytes": int(total[1]) if total else None,
        "pre_quant_bpb": float(prequant["val_bpb"]) if prequant else math.nan,
    }


# --- running the script --------------------------------------------------------------------------------

def link_data(data_dir: Path, train_dir, val_dir, tokenizer, vocab_size: int) -> dict[str, str]:
    """The challenge's data layout as symlinks to the DAG's files; returns the variables that point at it.
    Older records read DATA_PATH + TOKENIZER_PATH, newer ones derive both from DATA_DIR and VOCAB_SIZE."""
    datasets = data_dir / "datasets" / f"fineweb10B_sp{vocab_size}"
    datasets.mkdir(parents=True)
    for split, directory in (("train", train_dir), ("val", val_dir)):
        shards = sorted(Path(directory).glob("*.bin"))
        if not shards:
            raise ExternalScriptError(f"{directory}: no *.bin shards")
        for index, shard in enumerate(shards):
            (datasets / f"fineweb_{split}_{index:06d}.bin").symlink_to(Path(shard).resolve())
    tokenizers = data_dir / "tokenizers"
    tokenizers.mkdir()
    model = tokenizers / f"fineweb_{vocab_size}_bpe.model"
    model.symlink_to(Path(tokenizer).resolve())
    return {"DATA_DIR": str(data_dir), "DATA_PATH": str(datasets), "TOKENIZER_PATH": str(model),
            "VOCAB_SIZE": str(vocab_size)}


def copy_code(script: Path, files: list[str], run_dir: Path) -> dict[str, int]:
    """The script and its sibling files into run_dir, as laid out beside the script; bytes of each."""
    sizes = {}
    for relative in [script.name, *files]:
        source = script.parent / relative
        if not source.is_file():
            raise ExternalScriptError(f"external script file {source} not found (config external.script / external.files)")
        target = run_dir / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        sizes[relative] = target.stat().st_size
    return sizes


def _error_line(console: Path) -> str:
    """The script's own exception line (torchrun's ChildFailedError report after it names no cause)."""
    lines = console.read_text(errors="replace").splitlines() if console.exists() else []
    errors = [line for line in lines if ERROR_LINE_RE.match(line) and not line.startswith("torch.distributed.elastic")]
    return errors[-1] if errors else "no exception line in its output (see the job's log)"


def run_script(script: Path, run_dir: Path, env: dict, nproc: int, console: Path, log_path) -> float:
    """The script under torchrun with cwd run_dir, output to `console` and then the job's log; wall seconds."""
    cmd = [*torchrun_prefix(nproc), script.name]  # run_dir is its working directory
    start = time.monotonic()
    with open(console, "w") as out:
        result = subprocess.run(cmd, cwd=run_dir, env=env, stdout=out, stderr=subprocess.STDOUT)
    if log_path:
        with open(log_path, "a") as log:
            log.write("$ " + " ".join(cmd) + "\n" + console.read_text(errors="replace"))
    if result.returncode != 0:
        raise ExternalScriptError(f"external script {script} failed (exit {result.returncode}): {_error_line(console)}")
    return time.monotonic() - start


def script_log(run_dir: Path, run_id: str, console: Path) -> str:
    """The script's own log file (logs/<RUN_ID>.txt, as the records write it), else its console output."""
    own = run_dir / "logs" / f"{run_id}.txt"
    return (own if own.is_file() else console).read_text(errors="replace")


def measure_artifact(run_dir: Path, glob: str, code_sizes: dict[str, int]) -> dict:
    """Bytes of the compressed model file(s) the script wrote plus its code bytes."""
    files = {p.relative_to(run_dir).as_posix(): p.stat().st_size for p in sorted(run_dir.glob(glob)) if p.is_file()}
    if not files:
        raise ExternalScriptError(f"the script wrote no file matching external.artifact {glob!r} in its working "
                                  "directory; set external.artifact to the compressed model file it writes")
    model_bytes, code_bytes = sum(files.values()), sum(code_sizes.values())
    return {"artifact_files": files, "model_bytes": model_bytes, "code_files": code_sizes,
            "code_bytes": code_bytes, "total_bytes": model_bytes + code_bytes}


def summarize_run(log_text: str, external: dict, script: Path) -> dict:
    """Scores and training figures from the script's log; fails when the canonical score line is missing."""
    patterns = {**SCORE_PATTERNS, **external["patterns"]}
    scores = parse_scores(log_text, patterns)
    chosen = canonical_score(scores, external["score"])
    if chosen is None:
        wanted = "any score line" if external["score"] == "last" else f"a {external['score']!r} score line"
        raise ExternalScriptError(f"external script {script} printed no score: {wanted} (patterns: "
                                  f"{', '.join(patterns)}) is missing from its log; set external.score or "
                                  "add a pattern under external.patterns")
    name, val_loss, val_bpb = chosen
    return {"score_line": name, "val_loss": val_loss, "val_bpb": val_bpb,
            "scores": {n: {"val_loss": loss, "val_bpb": bpb} for _, n, loss, bpb in scores},
            **parse_training(log_text)}


def run_external(external: dict, wallclock_seconds: float, data: dict, seed: int, run_id: str, outputs: dict,
                 nproc: int, device: str, threads: int, log_path=None, gate: dict | None = None,
                 placement: Placement = CPU_JOB) -> dict:
    """Run the script for one seed; `data` names train_dir, val_dir, tokenizer, vocab_size; `outputs` names
    json, log and artifact_dir. Outputs appear only after a clean run with a canonical score. `gate` (the
    config's floors) first times the job's devices, as for pgolf's training; its figures go into the JSON."""
    script = Path(external["script"])
    out_json = Path(outputs["json"])
    out_json.parent.mkdir(parents=True, exist_ok=True)
    # absolute: the script runs in a directory of its own and reads the data through these paths
    with io.scratch_dir(out_json.parent.resolve(), ".external.") as scratch:
        run_dir = scratch / "run"
        run_dir.mkdir()
        code_sizes = copy_code(script, external["files"], run_dir)
        dag_env = link_data(scratch / "data", data["train_dir"], data["val_dir"], data["tokenizer"], data["vocab_size"])
        dag_env.update({"SEED": str(seed), "RUN_ID": run_id, "MAX_WALLCLOCK_SECONDS": str(wallclock_seconds)})
        env = {**launch_env(threads, nproc), **{k: str(v) for k, v in external["env"].items()}, **dag_env}
        gate_record = (run_gate(device, nproc, gate, scratch / "gate.json", log_path, threads, placement)
                       if gate else None)
        console = scratch / "console.txt"
        wall_seconds = run_script(script, run_dir, env, nproc, console, log_path)
        log_text = script_log(run_dir, run_id, console)
        summary = {"script": str(script), "script_sha256": io.sha256_file(script), "seed": seed, "run_id": run_id,
                   "world_size": nproc, "device": device, "wall_seconds": wall_seconds,
                   "env": {k: env[k] for k in sorted({*external["env"], *dag_env})},
                   **summarize_run(log_text, external, script), **measure_artifact(run_dir, external["artifact"], code_sizes)}
        # the script's own clock when it prints one; else the whole run's wall time (an upper bound)
        if math.isnan(summary["train_seconds"]):
            summary["train_seconds"] = wall_seconds
        summary["eval_seconds"] = max(wall_seconds - summary["train_seconds"], 0.0)
        summary["provenance"] = collect(REPO_ROOT, device)  # the checkout, software and host it ran under
        if gate_record:
            summary["gate"] = gate_record
        _publish(run_dir, summary, log_text, outputs)
    return summary


def _publish(run_dir: Path, summary: dict, log_text: str, outputs: dict) -> None:
    """Artifact files, then the log, then the JSON (the file the aggregate waits on) onto the rule's paths."""
    with io.atomic_dir(outputs["artifact_dir"]) as tmp:
        for name in summary["artifact_files"]:
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.move(run_dir / name, tmp / name)
    with io.atomic_path(outputs["log"]) as tmp:
        tmp.write_text(log_text)
    io.write_json(outputs["json"], _json_safe(summary))


def _json_safe(summary: dict) -> dict:
    """NaN (a figure the log did not carry) as null: JSON has no NaN."""
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in summary.items()}
