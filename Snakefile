# pgolf: docs → tokenizer → shards → train → quantize → compress → eval → aggregate.
# The embedded default (config/config.yaml) runs everything on a laptop CPU in minutes:
#     snakemake --cores 2 results/ablation_summary.tsv
import os
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version, validate

from pgolf.config import RunTable, load_schema, validate_config
from pgolf.preflight import check_local_gpu_runs, check_runs

min_version("9.0")


# The embedded default, unless --configfile names complete configs (config/challenge.yaml, ...):
# those replace it rather than being deep-merged into it, so no default ablation leaks in.
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


# Fills schema defaults and stops before any job with a message naming the bad key; pgolf's own
# message then adds how to write a number YAML read as text (1e-4: write 0.0001).
try:
    validate(config, "config/schema.yaml")
except WorkflowError:
    try:
        validate_config(config, load_schema(Path(workflow.basedir) / "config" / "schema.yaml"))
    except ValueError as e:
        raise WorkflowError(str(e)) from None
    raise

# S3 storage: the DAG asks the bucket what exists (a dry run too) and pods have no ~/.aws, so the
# keys must be in the environment; say so in one message instead of a traceback per file.
if workflow.storage_settings.default_storage_provider == "s3":
    missing = [v for v in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY") if not os.environ.get(v)]
    if missing:
        raise WorkflowError(
            f"S3 storage needs {' and '.join(missing)} in the environment (a RunPod network volume: "
            "its S3 API keys, with AWS_ENDPOINT_URL=https://s3api-<data centre id>.runpod.io). "
            "To plan without a bucket: add --default-storage-provider fs --default-storage-prefix /tmp/pgolf-store."
        )
RUNS = RunTable(config, load_schema(Path(workflow.basedir) / "config" / "schema.yaml"))

# Pre-flight of every ablation and grid cell, once, in the process that plans the jobs (not again
# inside each job), dry runs included.
CELLS = {name: ablation.cfg for name, ablation in RUNS.ablations.items()}
if workflow.is_main_process:
    check_runs(CELLS)


onstart:
    # Only here, before the first job, is the executor known: this machine's GPUs matter when jobs run here.
    if workflow.local_exec:
        check_local_gpu_runs(CELLS)


# Rules that run where the user is, whatever executor a profile picks for the others (config key
# local_rules; the slurm profile keeps only `all` here so tokenizing runs on the cluster).
workflow.localrules(*config["local_rules"])


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/train.smk"
include: "rules/quantize.smk"
include: "rules/eval.smk"
include: "rules/external.smk"
include: "rules/aggregate.smk"
include: "rules/submission.smk"


rule all:
    default_target: True
    input:
        SUMMARY_TSV,
