# pgolf: docs → tokenizer → shards → train → quantize → compress → eval → aggregate.
# The embedded default (config/config.yaml) runs everything on a laptop CPU in minutes:
#     snakemake --cores 2 results/ablation_summary.tsv
from pathlib import Path

from snakemake.utils import min_version, validate

from pgolf.config import RunTable, load_schema

min_version("9.0")


# The embedded default, unless --configfile names complete configs (config/challenge.yaml, ...):
# those replace it rather than being deep-merged into it, so no default ablation leaks in.
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


# Fills schema defaults and stops before any job with a message naming the bad key.
validate(config, "config/schema.yaml")
RUNS = RunTable(config, load_schema(Path(workflow.basedir) / "config" / "schema.yaml"))


# CPU-only stages run where the user is, whatever executor a profile picks for the GPU stages.
localrules:
    all,
    docs,
    tokenizer,
    shards,
    compress,
    aggregate,
    submission,


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/train.smk"
include: "rules/quantize.smk"
include: "rules/eval.smk"
include: "rules/external.smk"
include: "rules/aggregate.smk"
include: "rules/submission.smk"


rule all:
    input:
        SUMMARY_TSV,
    default_target: True
