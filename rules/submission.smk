# submission: results/submission/<ablation>/ is the folder a record PR needs (pgolf.submission), built from
# the ablation's seeds and its summary row. Ask for it by name: snakemake results/submission/<ablation>/submission.json


rule submission:
    input:
        summary=SUMMARY_TSV,
        files=lambda w: [row[kind] for row in submission_seeds(w) for kind in ("train", "log", "artifact", "eval")],
    output:  # files, not directory(): a record folder has no room for Snakemake's timestamp marker
        readme="results/submission/{ablation}/README.md",
        summary="results/submission/{ablation}/submission.json",
        code="results/submission/{ablation}/train_gpt.py",
        logs=expand("results/submission/{{ablation}}/train_seed{seed}.log", seed=RUNS.seeds),
    log:
        "results/logs/submission/{ablation}.log",
    wildcard_constraints:
        ablation="[A-Za-z0-9_.-]+",
    params:
        seeds=submission_seeds,
        cfg=lambda w: RUNS.ablations[w.ablation].cfg,
        meta=config["submission"],
    script:
        "../workflow/scripts/submission.py"
