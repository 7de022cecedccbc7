# Path templates and input functions shared by the rule files.
# Every stage's directory is keyed by a hash of the config it depends on (pgolf.config.STAGE_SECTIONS),
# so ablations share upstream artifacts and a config change re-runs only what it touches.

wildcard_constraints:
    docs_key="[0-9a-f]{10}",
    tok_key="[0-9a-f]{10}",
    shards_key="[0-9a-f]{10}",
    train_key="[0-9a-f]{10}",
    quant_key="[0-9a-f]{10}",
    compress_key="[0-9a-f]{10}",
    eval_key="[0-9a-f]{10}",
    prequant_key="[0-9a-f]{10}",
    seed="[0-9]+",


DOCS_DIR = "results/docs/{docs_key}"
TOK_DIR = "results/tokenizer/{tok_key}"
SHARDS_DIR = "results/shards/{shards_key}"
TRAIN_DIR = "results/train/{train_key}/seed{seed}"
QUANT_DIR = "results/quant/{quant_key}/seed{seed}"
ARTIFACT_DIR = "results/artifact/{compress_key}/seed{seed}"
EVAL_DIR = "results/eval/{eval_key}/seed{seed}"
PREQUANT_DIR = "results/eval_prequant/{prequant_key}/seed{seed}"
LOG_DIR = "results/logs"

SUMMARY_TSV = "results/ablation_summary.tsv"
SUMMARY_PARQUET = "results/ablation_summary.parquet"
INDEX_TSV = "results/index.tsv"


def upstream(stage, key_wildcard, target_stage, template, **extra):
    """Input function: the `target_stage` file that the stage keyed by `key_wildcard` reads."""

    def resolve(wildcards):
        key = RUNS.upstream_key(stage, getattr(wildcards, key_wildcard), target_stage)
        fields = {f"{_WILDCARD_OF[target_stage]}": key, **extra}
        if "{seed}" in template:
            fields["seed"] = wildcards.seed
        return template.format(**fields)

    return resolve


_WILDCARD_OF = {
    "docs": "docs_key",
    "tokenizer": "tok_key",
    "shards": "shards_key",
    "train": "train_key",
    "quant": "quant_key",
    "compress": "compress_key",
    "eval": "eval_key",
    "prequant": "prequant_key",
}


def stage_params(stage, key_wildcard):
    return lambda wildcards: RUNS.params(stage, getattr(wildcards, key_wildcard))


def train_gpus(wildcards):
    """GPUs a train job asks the executor for: one per torchrun process on CUDA, none on CPU."""
    cfg = RUNS.params("train", wildcards.train_key)
    return cfg["nproc"] if cfg["device"] == "cuda" else 0
