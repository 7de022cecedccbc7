"""Submission export: the folder a record PR needs, laid out as the challenge's
records/track_10min_16mb/<date>_<name>/: README.md, submission.json, train_seed<N>.log, train_gpt.py.

train_gpt.py is pgolf's packed code (pgolf.artifact.pack_code) with the ablation's config inside and
pgolf.record_script as its entry point: on a machine with torch, sentencepiece and the codecs it trains,
quantizes, compresses and evaluates under torchrun. Its size on disk is the submission's bytes_code.
"""
from __future__ import annotations

import datetime
import math
from pathlib import Path

import torch

from pgolf import io
from pgolf.artifact import CODE_ENTRY_MODULES, pack_code

TRACK = "10min_16mb"
ENTRY_MODULE = "pgolf.record_script"


def pack_train_gpt(cfg: dict) -> bytes:
    """The single-file train_gpt.py for one ablation's whole config."""
    sections = {name: cfg[name] for name in ("tokenizer", "train", "quant", "compress", "eval")}
    return pack_code((*CODE_ENTRY_MODULES, ENTRY_MODULE), extra_sources={"pgolf.submission_config": f"CONFIG = {sections!r}\n"},
                     run_module=ENTRY_MODULE)


def seed_results(seeds: list[dict], bytes_code: int) -> dict:
    """Per-seed numbers as the records give them; `seeds` holds each seed's loaded JSON (eval, train, artifact).
    A seed's artifact is its compressed model plus this train_gpt.py."""
    return {str(s["seed"]): {"val_loss": s["eval"]["val_loss"], "val_bpb": s["eval"]["val_bpb"],
                             "artifact_bytes": s["artifact"]["model_bytes"] + bytes_code, "steps": s["train"]["steps"],
                             "step_avg_ms": s["train"]["step_ms"], "eval_time_s": s["eval"]["eval_seconds"]}
            for s in seeds}


def _mean_std(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else math.nan
    return mean, std


def submission_json(meta: dict, seeds: list[dict], row: dict, bytes_code: int, date: str) -> dict:
    """submission.json: the records' fields. bytes_total is the largest seed's model plus this train_gpt.py."""
    loss_mean, loss_std = _mean_std([s["eval"]["val_loss"] for s in seeds])
    bpb_mean, bpb_std = _mean_std([s["eval"]["val_bpb"] for s in seeds])
    model_bytes = [s["artifact"]["model_bytes"] for s in seeds]
    out = {"author": meta["author"], "github_id": meta["github_id"], "name": meta["name"], "blurb": meta["blurb"],
           "date": date, "track": TRACK, "val_loss": loss_mean, "val_bpb": bpb_mean, "val_loss_std": loss_std,
           "val_bpb_std": bpb_std, "seeds": [s["seed"] for s in seeds], "seed_results": seed_results(seeds, bytes_code),
           "bytes_total": max(model_bytes) + bytes_code, "bytes_code": bytes_code,
           "artifact_bytes_max": max(model_bytes) + bytes_code,
           "train_steps_mean": _mean_std([s["train"]["steps"] for s in seeds])[0],
           "step_avg_ms_mean": _mean_std([s["train"]["step_ms"] for s in seeds])[0],
           "hardware": hardware(seeds), "pytorch_version": torch.__version__}
    if "delta_bpb_vs_reference" in row and not _is_nan(row["delta_bpb_vs_reference"]):
        out.update({"comparison_baseline_bpb": bpb_mean - row["delta_bpb_vs_reference"],
                    "delta_vs_leaderboard_bpb": row["delta_bpb_vs_reference"],
                    "delta_vs_leaderboard_nats": _none_if_nan(row.get("delta_nats_vs_reference"))})
    return {k: _none_if_nan(v) for k, v in out.items()}


def hardware(seeds: list[dict]) -> str:
    """Ranks x device, from the training runs' own train.json."""
    train = seeds[0]["train"]
    return f"{train['world_size']}x {train.get('gpu_name') or train.get('device', 'cpu')}"


def _is_nan(value) -> bool:
    return isinstance(value, float) and math.isnan(value)


def _none_if_nan(value):
    return None if _is_nan(value) else value


def readme(meta: dict, ablation: str, sub: dict, row: dict, reference: dict | None) -> str:
    """README.md: what it is, the per-seed table, mean and std, and the tests against the reference."""
    lines = [f"# {sub['name']}", "", meta["blurb"] or f"pgolf ablation `{ablation}`.", "",
             "Trained, quantized, compressed and evaluated by `train_gpt.py` (pgolf, single file). Run with:", "",
             "    SEED=<seed> RUN_ID=<name> DATA_DIR=./data/ torchrun --standalone --nproc_per_node="
             f"{row.get('world_size', 1)} train_gpt.py", "",
             "| seed | val_loss | val_bpb | artifact bytes | steps | step ms | eval s |", "|---|---|---|---|---|---|---|"]
    for seed, r in sub["seed_results"].items():
        lines.append(f"| {seed} | {r['val_loss']:.8f} | {r['val_bpb']:.8f} | {r['artifact_bytes']} | {r['steps']} "
                     f"| {r['step_avg_ms']:.2f} | {r['eval_time_s']:.1f} |")
    lines += ["", f"Mean over {len(sub['seeds'])} seeds: val_bpb {sub['val_bpb']:.8f} (std {_fmt(sub['val_bpb_std'])}), "
              f"val_loss {sub['val_loss']:.8f} (std {_fmt(sub['val_loss_std'])}). Code {sub['bytes_code']} bytes, "
              f"largest artifact {sub['bytes_total']} bytes (limit 16,000,000).", ""]
    if reference:
        lines += [f"Against {reference['name']} (val_bpb {reference['val_bpb']['mean']:.5f}, "
                  f"n={reference['val_bpb']['n']}): delta {_fmt(row.get('delta_bpb_vs_reference'))} bpb, "
                  f"{_fmt(row.get('delta_nats_vs_reference'))} nats.",
                  f"- strict rule (one-sided Welch on val_loss, 0.005-nat margin, p < 0.01): p = "
                  f"{_fmt(row.get('p_strict_vs_reference'))}",
                  f"- practised rule (one-sided Welch on val_bpb, no margin): p = {_fmt(row.get('p_welch_vs_reference'))}", ""]
    else:
        lines += ["No reference was configured (config `reference`), so no test against a record is given.", ""]
    return "\n".join(lines)


def seed_log(seed: dict, bytes_code: int) -> str:
    """The seed's train.log, then the pipeline's measured bytes and eval score in the records' line format."""
    model_bytes, scored = seed["artifact"]["model_bytes"], seed["eval"]
    return (Path(seed["log"]).read_text().rstrip("\n") + "\n"
            f"Serialized model {seed['artifact'].get('codec', 'compressed')}: {model_bytes} bytes\n"
            f"Code size: {bytes_code} bytes\n"
            f"Total submission size: {model_bytes + bytes_code} bytes\n"
            f"quantized_sliding_window val_loss:{scored['val_loss']:.8f} val_bpb:{scored['val_bpb']:.8f} "
            f"eval_time:{1000 * scored['eval_seconds']:.0f}ms\n")


def _fmt(value) -> str:
    return "n/a" if value is None or _is_nan(value) else f"{value:.5g}"


def export_submission(cfg: dict, ablation: str, seeds: list[dict], row: dict, meta: dict, out_dir, date: str | None = None) -> dict:
    """Build the folder; `seeds` holds per seed: seed, train/eval/artifact (loaded JSON) and log (path)."""
    meta = {**meta, "name": meta["name"] or ablation}
    code = pack_train_gpt(cfg)
    date = date or datetime.date.today().isoformat()
    sub = submission_json(meta, seeds, row, len(code), date)
    with io.atomic_dir(out_dir) as tmp:
        (tmp / "train_gpt.py").write_bytes(code)
        for s in seeds:
            (tmp / f"train_seed{s['seed']}.log").write_text(seed_log(s, len(code)))
        io.write_json(tmp / "submission.json", sub)
        (tmp / "README.md").write_text(readme(meta, ablation, sub, row, cfg.get("reference")))
    return sub
