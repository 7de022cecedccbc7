"""Snakemake entry point: per-ablation summary with significance tests (pgolf.aggregate), and the report's figures."""
import logging

from pgolf.aggregate import format_table, load_seed_table, write_summary
from pgolf.figures import FIGURES, write_figures

logging.basicConfig(filename=snakemake.log[0], level=logging.INFO, format="%(asctime)s %(message)s")
summary = write_summary(
    snakemake.params.rows, snakemake.params.baseline, snakemake.params.reference,
    snakemake.params.usd_per_gpu_hour, snakemake.output.tsv, snakemake.output.parquet, snakemake.output.index,
    expect=snakemake.params.expect, pods_dir=snakemake.params.pods_dir,
)
write_figures(summary, load_seed_table(snakemake.params.rows, snakemake.params.expect), snakemake.params.baseline,
              snakemake.params.reference, {name: snakemake.output[name] for name in FIGURES})
table = format_table(summary)
logging.info("summary:\n%s", table)
print(table)
print(f"\npgolf: summary written to {snakemake.output.tsv} (columns: README.md, 'Summary columns'), figures "
      "in results/figures/; "
      "for an HTML report run: snakemake --report report.html")
