"""Aggregate every seed's train/artifact/eval JSON into one row per ablation (README: Summary columns)."""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from pgolf import ARTIFACT_LIMIT_BYTES
from pgolf.config import KEY_WILDCARD, STAGE_SECTIONS
from pgolf.io import atomic_path, read_json
from pgolf.postflight import flags as postflight_flags
from pgolf.provenance import summary_columns as provenance_columns
from pgolf.stats import (PRACTISED_ALPHA, STRICT_ALPHA, STRICT_MARGIN_NATS, Sample, ci95, min_detectable_improvement,
                         p_less, pooled_std, seeds_needed)


# The score_line of rows scored by pgolf's own eval stage (external scripts name their log line's pattern).
PGOLF_SCORE_LINE = "pgolf_eval"
# Pod reports name the jobs' wildcards; this maps a wildcard back to its stage.
WILDCARD_STAGES = {wildcard: stage for stage, wildcard in KEY_WILDCARD.items()}


def load_seed_table(rows: list[dict], expect: dict | None = None) -> pd.DataFrame:
    """One record per (ablation, seed) with the numbers the summary needs, read from the JSON files."""
    records = []
    for row in rows:
        record = _external_record(row, expect) if "external" in row else _pgolf_record(row, expect)
        record.update({f"key_{stage}": key for stage, key in row["keys"].items()})
        records.append(record)
    return pd.DataFrame.from_records(records)


def _pgolf_record(row: dict, expect: dict | None) -> dict:
    """A seed of pgolf's own stack: scored by pgolf's eval of the compressed artifact."""
    train, artifact = read_json(row["train"]), read_json(row["artifact"])
    scored, prequant = read_json(row["eval"]), read_json(row["prequant"])
    on_gpu = str(train.get("device", "cpu")).startswith("cuda")
    eval_gpu_seconds = scored["eval_seconds"] * scored.get("world_size", 1)
    gpu_seconds = train["train_seconds"] * train["world_size"] + eval_gpu_seconds if on_gpu else 0.0
    return {
        "ablation": row["ablation"],
        "seed": row["seed"],
        "train_log": row.get("train_log"),
        "val_bpb": scored["val_bpb"],
        "val_loss": scored["val_loss"],
        "score_line": PGOLF_SCORE_LINE,
        "pre_quant_bpb": prequant["val_bpb"],
        "artifact_bytes": artifact["total_bytes"],
        "model_bytes": artifact["model_bytes"],
        "code_bytes": artifact["code_bytes"],
        "steps": train["steps"],
        "step_ms": train["step_ms"],
        "tokens_per_second": train["tokens_per_second"],
        "train_seconds": train["train_seconds"],
        "eval_seconds": scored["eval_seconds"],
        "world_size": train["world_size"],
        "device": train["device"],
        "gpu_hours": gpu_seconds / 3600.0,
        "provenance": [train.get("provenance"), scored.get("provenance")],
        "aborted": bool(train.get("aborted")),
        "gate_tflops": _slowest_device(train, "tflops"),
        "gate_gbps": _slowest_device(train, "gbps"),
        "flags": [f"seed {row['seed']}: {flag}" for flag in postflight_flags(train, artifact, expect, scored)
                  + ([f"aborted ({train['abort_reason']})"] if train.get("aborted") else [])],
    }


def _slowest_device(train: dict, figure: str) -> float:
    """The GPU gate's figure (tflops, gbps) of the job's slowest device; NaN for a run without a gate."""
    return min((d[figure] for d in (train.get("gate") or {}).get("devices", [])), default=math.nan)


def _external_record(row: dict, expect: dict | None) -> dict:
    """A seed of an external script (pgolf.external): its own score line, flagged script_eval."""
    run = read_json(row["external"])
    on_gpu = str(run["device"]).startswith("cuda")
    nan = lambda value: math.nan if value is None else value  # noqa: E731 (a figure the log did not carry)
    return {
        "ablation": row["ablation"],
        "seed": row["seed"],
        "train_log": row.get("train_log"),
        "val_bpb": run["val_bpb"],
        "val_loss": run["val_loss"],
        "score_line": run["score_line"],
        "pre_quant_bpb": nan(run["pre_quant_bpb"]),
        "artifact_bytes": run["total_bytes"],
        "model_bytes": run["model_bytes"],
        "code_bytes": run["code_bytes"],
        "steps": run["steps"],
        "step_ms": nan(run["step_ms"]),
        "tokens_per_second": nan(run["tokens_per_second"]),
        "train_seconds": run["train_seconds"],
        "eval_seconds": run["eval_seconds"],
        "world_size": run["world_size"],
        "device": run["device"],
        "gpu_hours": run["wall_seconds"] * run["world_size"] / 3600.0 if on_gpu else 0.0,
        "provenance": [run.get("provenance")],
        "aborted": False,  # abort rules act inside pgolf's training loop only
        "gate_tflops": _slowest_device(run, "tflops"),
        "gate_gbps": _slowest_device(run, "gbps"),
        "flags": [f"seed {row['seed']}: {flag}" for flag in postflight_flags(run, run, expect, run)],
    }


def versus(prefix: str, mine_bpb: Sample, mine_loss: Sample, ref_bpb: Sample, ref_loss: Sample | None) -> dict:
    """Deltas and both rules' one-sided Welch p-values of mine against a reference: practised on val_bpb,
    strict on val_loss 0.005 nats below (NaN without the reference's val_loss). Keys end in `_vs_{prefix}`."""
    out = {
        f"delta_bpb_vs_{prefix}": mine_bpb.mean - ref_bpb.mean,
        f"p_welch_vs_{prefix}": p_less(mine_bpb, ref_bpb),
    }
    if ref_loss is None:
        out.update({f"delta_nats_vs_{prefix}": math.nan, f"p_strict_vs_{prefix}": math.nan})
        if prefix == "baseline":
            out["seeds_needed_strict"] = math.nan
        return out
    out[f"delta_nats_vs_{prefix}"] = mine_loss.mean - ref_loss.mean
    out[f"p_strict_vs_{prefix}"] = p_less(mine_loss, ref_loss, STRICT_MARGIN_NATS)
    if prefix == "baseline":
        out["seeds_needed_strict"] = seeds_needed(mine_loss, ref_loss)
    return out


def load_pod_reports(pods_dir) -> list[dict]:
    """The RunPod executor's one-line JSON report per job (results/pods/*.json); none on local runs."""
    pods_dir = Path(pods_dir) if pods_dir else None
    if pods_dir is None or not pods_dir.is_dir():
        return []
    return [read_json(path) for path in sorted(pods_dir.glob("*.json"))]


def pod_usage(reports: list[dict], keys: dict[str, str], seeds: set[int]) -> tuple[float, float]:
    """GPU-hours and dollars of the pod jobs that produced this ablation's files (shared jobs, such
    as one trained model behind two quantization ablations, count toward each)."""
    gpu_hours = cost = 0.0
    for report in reports:
        # A group job (one pod for a seed's train -> eval) lists its jobs; a single job is one.
        jobs = report.get("jobs") or [report]
        if any(_serves(job.get("wildcards") or {}, keys, seeds) for job in jobs):
            gpu_hours += float(report.get("gpu_hours", 0.0))
            cost += float(report.get("cost_usd", 0.0))
    return gpu_hours, cost


def _serves(wildcards: dict, keys: dict[str, str], seeds: set[int]) -> bool:
    """The job with these wildcards made one of the ablation's files (its stage keys and seed)."""
    stage_keys = {WILDCARD_STAGES[w]: v for w, v in wildcards.items() if w in WILDCARD_STAGES}
    if not stage_keys or any(keys.get(stage) != value for stage, value in stage_keys.items()):
        return False
    return "seed" not in wildcards or int(wildcards["seed"]) in seeds


def noise_floor(groups: dict[str, pd.DataFrame], n_seeds: int) -> dict:
    """Seed-to-seed noise pooled over every ablation, and the smallest improvement over the baseline each
    rule could detect with `n_seeds` seeds per side at that noise (the same for every row)."""
    std_bpb = pooled_std(g["val_bpb"] for g in groups.values())
    std_nats = pooled_std(g["val_loss"] for g in groups.values())
    return {
        "noise_std_bpb": std_bpb,
        "noise_std_nats": std_nats,
        "min_improvement_bpb_practised": min_detectable_improvement(std_bpb, n_seeds, PRACTISED_ALPHA),
        "min_improvement_nats_strict": min_detectable_improvement(std_nats, n_seeds, STRICT_ALPHA,
                                                                  STRICT_MARGIN_NATS),
    }


def summarize(seeds: pd.DataFrame, baseline: str, reference: dict | None, usd_per_gpu_hour: float,
              pod_reports: list[dict] | None = None, n_seeds: int | None = None) -> pd.DataFrame:
    """Per-ablation statistics and tests against the baseline ablation and the external reference.
    `n_seeds`: the configured seeds per ablation, for the noise floor (default: the most any ablation has)."""
    # Aborted seeds (train.json says why) are never ranked: they leave the statistics, their flags stay.
    aborted = {name: g for name, g in seeds[seeds["aborted"]].groupby("ablation", sort=False)}
    seeds = seeds[~seeds["aborted"]]
    if baseline not in set(seeds["ablation"]):
        raise ValueError(f"baseline ablation {baseline!r} has no results"
                         + (" (every seed aborted: see its train.log)" if baseline in aborted else ""))
    groups = {name: group for name, group in seeds.groupby("ablation", sort=False)}
    noise = noise_floor(groups, n_seeds or max(len(g) for g in groups.values()))
    base_bpb, base_loss = Sample.of(groups[baseline]["val_bpb"]), Sample.of(groups[baseline]["val_loss"])
    ref_bpb = ref_loss = None
    if reference:
        ref_bpb = Sample(**reference["val_bpb"])
        ref_loss = Sample(**reference["val_loss"]) if reference.get("val_loss") else None

    rows = []
    for name, g in groups.items():
        bpb, loss = Sample.of(g["val_bpb"]), Sample.of(g["val_loss"])
        low, high = ci95(bpb)
        keys = stage_keys(g)
        gpu_hours, cost_usd = float(g["gpu_hours"].sum()), float(g["gpu_hours"].sum()) * usd_per_gpu_hour
        cost_source = "estimate"
        if pod_reports:
            gpu_hours, cost_usd = pod_usage(pod_reports, keys, set(g["seed"]))
            cost_source = "pods"
        row = {
            "ablation": name,
            "n_seeds": bpb.n,
            "seeds": ",".join(str(s) for s in g["seed"]),
            "val_bpb_mean": bpb.mean,
            "val_bpb_std": bpb.std,
            "val_bpb_ci95_low": low,
            "val_bpb_ci95_high": high,
            "val_loss_mean": loss.mean,
            "val_loss_std": loss.std,
            "score_line": ",".join(sorted(set(g["score_line"]))),
            "script_eval": bool((g["score_line"] != PGOLF_SCORE_LINE).any()),
            "pre_quant_bpb_mean": float(g["pre_quant_bpb"].mean()),
            "quant_gap_bpb": bpb.mean - float(g["pre_quant_bpb"].mean()),
            "artifact_bytes_max": int(g["artifact_bytes"].max()),
            "model_bytes_max": int(g["model_bytes"].max()),
            "code_bytes": int(g["code_bytes"].max()),
            "fits_16mb": bool((g["artifact_bytes"] <= ARTIFACT_LIMIT_BYTES).all()),
            "steps_mean": float(g["steps"].mean()),
            "step_ms_mean": float(g["step_ms"].mean()),
            "tokens_per_second_mean": float(g["tokens_per_second"].mean()),
            "train_seconds_mean": float(g["train_seconds"].mean()),
            "eval_seconds_mean": float(g["eval_seconds"].mean()),
            "world_size": int(g["world_size"].max()),
            "gate_tflops_min": float(g["gate_tflops"].min()),
            "gate_gbps_min": float(g["gate_gbps"].min()),
            "device": ",".join(sorted(set(g["device"]))),
            "gpu_hours": gpu_hours,
            "cost_usd": cost_usd,
            "cost_source": cost_source,
        }
        row.update(versus("baseline", bpb, loss, base_bpb, base_loss))
        if name == baseline:  # a group tested against itself says nothing
            row.update({k: math.nan for k in ("p_welch_vs_baseline", "p_strict_vs_baseline", "seeds_needed_strict")})
        row["significant_strict_vs_baseline"] = bool(row["p_strict_vs_baseline"] < STRICT_ALPHA)
        row["significant_practised_vs_baseline"] = bool(row["p_welch_vs_baseline"] < PRACTISED_ALPHA)
        if ref_bpb is not None:
            row.update(versus("reference", bpb, loss, ref_bpb, ref_loss))
        row.update(noise)
        row.update(provenance_columns([record for records in g["provenance"] for record in records]))
        dropped = aborted.pop(name, g.iloc[:0])
        row["n_aborted"] = len(dropped)
        row["flags"] = ";".join(_flags(row) + [flag for seed_flags in pd.concat([g, dropped])["flags"]
                                               for flag in seed_flags])
        row.update({f"key_{stage}": key for stage, key in keys.items()})
        rows.append(row)
    rows += [aborted_row(name, g, noise) for name, g in aborted.items()]
    return pd.DataFrame.from_records(rows)


def aborted_row(name: str, g: pd.DataFrame, noise: dict) -> dict:
    """An ablation whose every seed aborted: no statistics, only why (flags) and its keys."""
    return {"ablation": name, "n_seeds": 0, "n_aborted": len(g), "seeds": "", "fits_16mb": False,
            "significant_strict_vs_baseline": False, "significant_practised_vs_baseline": False, **noise,
            "flags": ";".join(["fewer_than_3_seeds"] + [flag for seed_flags in g["flags"] for flag in seed_flags]),
            **{f"key_{stage}": key for stage, key in stage_keys(g).items()}}


def stage_keys(g: pd.DataFrame) -> dict[str, str]:
    """The cache key of each stage the ablation's seeds ran (an external script's runs only some)."""
    return {stage: g[f"key_{stage}"].iloc[0] for stage in STAGE_SECTIONS
            if f"key_{stage}" in g and isinstance(g[f"key_{stage}"].iloc[0], str)}


def _flags(row: dict) -> list[str]:
    """Reasons not to rank a row at face value, beyond the per-seed post-flight flags."""
    flags = []
    if row["n_seeds"] < 3:
        flags.append("fewer_than_3_seeds")
    if row["script_eval"]:  # the script's own evaluation, not pgolf's eval of its artifact
        flags.append(f"script_eval: {row['score_line']}")
    return flags


def write_summary(rows: list[dict], baseline: str, reference: dict | None, usd_per_gpu_hour: float,
                  out_tsv, out_parquet, out_index, expect: dict | None = None, pods_dir=None) -> pd.DataFrame:
    seeds = load_seed_table(rows, expect)
    summary = summarize(seeds, baseline, reference, usd_per_gpu_hour, load_pod_reports(pods_dir),
                        n_seeds=len({r["seed"] for r in rows}))
    index = pd.DataFrame.from_records(
        [{"ablation": r["ablation"], "seed": r["seed"], **{f"key_{s}": k for s, k in r["keys"].items()},
          **{f"{kind}_json": r[kind] for kind in ("eval", "train", "artifact", "external") if kind in r}}
         for r in rows])
    for frame, path, writer in ((summary, out_tsv, "tsv"), (summary, out_parquet, "parquet"), (index, out_index, "tsv")):
        with atomic_path(path) as tmp:
            if writer == "tsv":
                frame.to_csv(tmp, sep="\t", index=False, float_format="%.8g")
            else:
                frame.to_parquet(tmp, index=False)
    return summary


def format_table(summary: pd.DataFrame) -> str:
    """The handful of columns a person reads first, for the log and the terminal."""
    cols = ["ablation", "n_seeds", "val_bpb_mean", "val_bpb_std", "pre_quant_bpb_mean", "artifact_bytes_max",
            "fits_16mb", "delta_bpb_vs_baseline", "p_welch_vs_baseline", "p_strict_vs_baseline", "flags"]
    return summary[cols].to_string(index=False, float_format=lambda x: f"{x:.5g}")

