"""Snakemake entry point: the record-PR folder of one ablation (pgolf.submission)."""
import logging
from pathlib import Path

import pandas as pd

from pgolf.io import read_json
from pgolf.submission import export_submission

logging.basicConfig(filename=snakemake.log[0], level=logging.INFO, format="%(asctime)s %(message)s")  # noqa: F821
ablation = snakemake.wildcards.ablation  # noqa: F821
summary = pd.read_csv(snakemake.input.summary, sep="\t").set_index("ablation")  # noqa: F821
seeds = [{"seed": row["seed"], "log": row["log"], **{kind: read_json(row[kind]) for kind in ("train", "artifact", "eval")}}
         for row in snakemake.params.seeds]  # noqa: F821
sub = export_submission(snakemake.params.cfg, ablation, seeds, summary.loc[ablation].to_dict(),  # noqa: F821
                        snakemake.params.meta, Path(snakemake.output.summary).parent)  # noqa: F821
logging.info("%s: val_bpb %.8f over %d seeds, %d bytes", ablation, sub["val_bpb"], len(seeds), sub["bytes_total"])
print(f"pgolf: submission folder written to {Path(snakemake.output.summary).parent} (val_bpb {sub['val_bpb']:.5f}, "  # noqa: F821
      f"{sub['bytes_total']} bytes); fill in submission.author/github_id in the config if they are null")
