# aggregate: per-ablation statistics over seeds, significance tests against the baseline ablation
# and an optional external reference (pgolf.stats), one row per ablation.


rule aggregate:
    input:
        [
            row[kind]
            for row in seed_rows()
            for kind in ("train", "train_log", "artifact", "eval", "prequant", "external")
            if kind in row
        ],
    # one PNG per pgolf.figures.FIGURES, each with its caption in docs/report/
    output:
        **{
            name: report(FIGURE_PNG.format(name=name), category="Figures", caption=f"../docs/report/{name}.rst")
            for name in FIGURES
        },
        tsv=report(SUMMARY_TSV, category="Summary", caption="../docs/report/summary.rst"),
        parquet=SUMMARY_PARQUET,
        index=INDEX_TSV,
    log:
        "results/logs/aggregate.log",
    params:
        rows=seed_rows(),
        baseline=RUNS.baseline,
        reference=config["reference"],
        usd_per_gpu_hour=config["cost"]["usd_per_gpu_hour"],
        expect=config["expect"],
        pods_dir=POD_REPORTS_DIR,
    script:
        "../workflow/scripts/aggregate.py"
