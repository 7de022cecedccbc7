# submission: results/submission/<ablation>/ is the folder a record PR needs (pgolf.submission), built from
# the ablation's seeds and its summary row. Ask for it by name: snakemake results/submission/<ablation>/submission.json


def submission_seeds(wildcards):
    """Per seed of the ablation: its train.json, train.log, artifact.json and eval.json."""
    ablation = RUNS.ablations.get(wildcards.ablation)
    if ablation is None:
        raise ValueError(f"results/submission/{wildcards.ablation}: no ablation of that name "
                         f"(have: {', '.join(RUNS.ablations)})")
    if ablation.external:
        raise ValueError(f"results/submission/{wildcards.ablation}: an external script's ablation; "
                         "its own script and logs are its submission")
    rows = [row for row in seed_rows() if row["ablation"] == wildcards.ablation]
    return [{**row, "log": TRAIN_LOG.format(train_key=row["keys"]["train"], seed=row["seed"])} for row in rows]


rule submission:
    input:
        summary=SUMMARY_TSV,
        files=lambda w: [row[kind] for row in submission_seeds(w) for kind in ("train", "log", "artifact", "eval")],
    output:  # files, not directory(): a record folder has no room for Snakemake's timestamp marker
        readme="results/submission/{ablation}/README.md",
        summary="results/submission/{ablation}/submission.json",
        code="results/submission/{ablation}/train_gpt.py",
        logs=expand("results/submission/{{ablation}}/train_seed{seed}.log", seed=RUNS.seeds),
    wildcard_constraints:
        ablation="[A-Za-z0-9_.-]+",
    params:
        seeds=submission_seeds,
        cfg=lambda w: RUNS.ablations[w.ablation].cfg,
        meta=config["submission"],
    log:
        "results/logs/submission/{ablation}.log",
    script:
        "../workflow/scripts/submission.py"
