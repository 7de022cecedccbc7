"""Snakemake entry point: per-ablation summary with significance tests (pgolf.aggregate)."""
import logging

from pgolf.aggregate import format_table, write_summary

logging.basicConfig(filename=snakemake.log[0], level=logging.INFO, format="%(asctime)s %(message)s")
summary = write_summary(
    snakemake.params.rows, snakemake.params.baseline, snakemake.params.reference,
    snakemake.params.usd_per_gpu_hour, snakemake.output.tsv, snakemake.output.parquet, snakemake.output.index,
    expect=snakemake.params.expect, pods_dir=snakemake.params.pods_dir,
)
table = format_table(summary)
logging.info("summary:\n%s", table)
print(table)
print(f"\npgolf: summary written to {snakemake.output.tsv} (columns: README.md, 'Summary columns'); "
      "for an HTML report run: snakemake --report report.html")
