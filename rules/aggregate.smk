# aggregate: per-ablation statistics over seeds, significance tests against the baseline ablation
# and an optional external reference (pgolf.stats), one row per ablation.


def seed_rows():
    """One row per (ablation, seed) naming every JSON the aggregate reads, plus the stage keys."""
    rows = []
    for ablation in RUNS.ablations.values():
        k = ablation.keys
        for seed in RUNS.seeds:
            rows.append({
                "ablation": ablation.name,
                "seed": seed,
                "keys": k,
                "train": TRAIN_DIR.format(train_key=k["train"], seed=seed) + "/train.json",
                "artifact": ARTIFACT_DIR.format(compress_key=k["compress"], seed=seed) + "/artifact.json",
                "eval": EVAL_DIR.format(eval_key=k["eval"], seed=seed) + "/eval.json",
                "prequant": PREQUANT_DIR.format(prequant_key=k["prequant"], seed=seed) + "/eval.json",
            })
    return rows


rule aggregate:
    input:
        [row[kind] for row in seed_rows() for kind in ("train", "artifact", "eval", "prequant")],
    output:
        tsv=report(SUMMARY_TSV, category="Summary", caption="../docs/report/summary.rst"),
        parquet=SUMMARY_PARQUET,
        index=INDEX_TSV,
    params:
        rows=seed_rows(),
        baseline=RUNS.baseline,
        reference=config.get("reference"),
        usd_per_gpu_hour=config["cost"]["usd_per_gpu_hour"],
        expect=config["expect"],
        # written by the RunPod executor beside the workflow's outputs, not a workflow output itself
        pods_dir="results/pods",
    log:
        LOG_DIR + "/aggregate.log",
    script:
        "../workflow/scripts/aggregate.py"
