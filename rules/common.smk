# Path templates and input functions shared by the rule files.
# Every stage's directory is keyed by a hash of the config it and its upstream stages read
# (pgolf.config.STAGE_SECTIONS), so ablations share upstream artifacts and a config change
# re-runs only what it touches.


wildcard_constraints:
    docs_key="[0-9a-f]{10}",
    tok_key="[0-9a-f]{10}",
    shards_key="[0-9a-f]{10}",
    train_key="[0-9a-f]{10}",
    quant_key="[0-9a-f]{10}",
    compress_key="[0-9a-f]{10}",
    eval_key="[0-9a-f]{10}",
    prequant_key="[0-9a-f]{10}",
    external_key="[0-9a-f]{10}",
    seed="[0-9]+",


DOCS_JSONL = "results/docs/{docs_key}/docs.jsonl"
DOCS_META = "results/docs/{docs_key}/docs.json"
TOKENIZER_MODEL = "results/tokenizer/{tok_key}/tokenizer.model"
TOKENIZER_META = "results/tokenizer/{tok_key}/tokenizer.json"
TRAIN_SHARDS = "results/shards/{shards_key}/train"
VAL_SHARDS = "results/shards/{shards_key}/val"
SHARDS_MANIFEST = "results/shards/{shards_key}/manifest.json"
MODEL_PT = "results/train/{train_key}/seed{seed}/model.pt"
HESSIANS_PT = "results/train/{train_key}/seed{seed}/hessians.pt"
TRAIN_LOG = "results/train/{train_key}/seed{seed}/train.log"
TRAIN_JSON = "results/train/{train_key}/seed{seed}/train.json"
QUANT_BIN = "results/quant/{quant_key}/seed{seed}/quant.bin"
QUANT_JSON = "results/quant/{quant_key}/seed{seed}/quant.json"
ARTIFACT_BLOB = "results/artifact/{compress_key}/seed{seed}/model.blob"
ARTIFACT_CODE = "results/artifact/{compress_key}/seed{seed}/code.py"
ARTIFACT_JSON = "results/artifact/{compress_key}/seed{seed}/artifact.json"
EVAL_JSON = "results/eval/{eval_key}/seed{seed}/eval.json"
PREQUANT_JSON = "results/eval_prequant/{prequant_key}/seed{seed}/eval.json"
EXTERNAL_JSON = "results/external/{external_key}/seed{seed}/external.json"
EXTERNAL_LOG = "results/external/{external_key}/seed{seed}/train.log"
EXTERNAL_ARTIFACT = "results/external/{external_key}/seed{seed}/artifact"

SUMMARY_TSV = "results/ablation_summary.tsv"
SUMMARY_PARQUET = "results/ablation_summary.parquet"
INDEX_TSV = "results/index.tsv"
FIGURE_PNG = "results/figures/{name}.png"
# Written by the RunPod executor beside the workflow's outputs; not a workflow output itself.
POD_REPORTS_DIR = "results/pods"

# The wildcard that carries each stage's key.
from pgolf.config import KEY_WILDCARD
from pgolf.figures import FIGURES


def upstream_path(stage, wildcards, target_stage, template):
    """The `target_stage` file that the job of `stage` (keyed by its wildcard) reads."""
    key = RUNS.upstream_key(stage, getattr(wildcards, KEY_WILDCARD[stage]), target_stage)
    fields = {KEY_WILDCARD[target_stage]: key}
    if "{seed}" in template:
        fields["seed"] = wildcards.seed
    return template.format(**fields)


def upstream(stage, target_stage, template):
    """Input function form of upstream_path."""
    return lambda wildcards: upstream_path(stage, wildcards, target_stage, template)


def stage_params(stage):
    """The config section a stage's script reads, for the job's key."""
    return lambda wildcards: RUNS.params(stage, getattr(wildcards, KEY_WILDCARD[stage]))


def stage_config(stage, wildcards):
    """The whole resolved config of (any) ablation with this job's key."""
    return RUNS.ablation_for(stage, getattr(wildcards, KEY_WILDCARD[stage])).cfg


def tokenizer_inputs(wildcards):
    """Docs only when the tokenizer is trained here (not a given file or the published one)."""
    cfg = RUNS.params("tokenizer", wildcards.tok_key)
    if cfg["model"] or cfg["hf_repo"]:
        return {}
    return {"docs": upstream_path("tokenizer", wildcards, "docs", DOCS_JSONL)}


def shards_inputs(wildcards):
    """Docs only when the shards are built here; published shards need just the tokenizer."""
    inputs = {"tokenizer": upstream_path("shards", wildcards, "tokenizer", TOKENIZER_MODEL)}
    if RUNS.params("shards", wildcards.shards_key)["source"] == "build":
        inputs["docs"] = upstream_path("shards", wildcards, "docs", DOCS_JSONL)
    return inputs


def _gpus(train_cfg):
    """One GPU per torchrun process on CUDA, none on CPU."""
    return train_cfg["nproc"] if train_cfg["device"] == "cuda" else 0


def train_gpus(wildcards):
    """GPUs a train job asks the executor for."""
    return _gpus(RUNS.params("train", wildcards.train_key))


def eval_gpus(stage):
    """Eval runs one rank per GPU on as many GPUs as training used (the challenge's 8×H100); none on CPU."""
    return lambda wildcards: _gpus(stage_config(stage, wildcards)["train"])


def quant_gpus(wildcards):
    """GPTQ runs on one GPU when training ran on CUDA; none on CPU."""
    return min(1, _gpus(stage_config("quant", wildcards)["train"]))


def external_files(wildcards):
    """The external script's sibling files (external.files, relative to the script's directory)."""
    cfg = RUNS.params("external", wildcards.external_key)
    return [str(Path(cfg["script"]).parent / name) for name in cfg["files"]]


def seed_rows():
    """One row per (ablation, seed) naming every JSON the aggregate reads, plus the stage keys."""
    rows = []
    for ablation in RUNS.ablations.values():
        k = ablation.keys
        for seed in RUNS.seeds:
            if ablation.external:
                json_path = EXTERNAL_JSON.format(external_key=k["external"], seed=seed)
                rows.append({"ablation": ablation.name, "seed": seed, "keys": k, "external": json_path})
                continue
            rows.append(
                {
                    "ablation": ablation.name,
                    "seed": seed,
                    "keys": k,
                    "train": TRAIN_JSON.format(train_key=k["train"], seed=seed),
                    "train_log": TRAIN_LOG.format(train_key=k["train"], seed=seed),
                    "artifact": ARTIFACT_JSON.format(compress_key=k["compress"], seed=seed),
                    "eval": EVAL_JSON.format(eval_key=k["eval"], seed=seed),
                    "prequant": PREQUANT_JSON.format(prequant_key=k["prequant"], seed=seed),
                }
            )
    return rows


def submission_seeds(wildcards):
    """Per seed of the ablation: its train.json, train.log, artifact.json and eval.json."""
    ablation = RUNS.ablations.get(wildcards.ablation)
    if ablation is None:
        raise ValueError(
            f"results/submission/{wildcards.ablation}: no ablation of that name (have: {', '.join(RUNS.ablations)})"
        )
    if ablation.external:
        raise ValueError(
            f"results/submission/{wildcards.ablation}: an external script's ablation; "
            "its own script and logs are its submission"
        )
    rows = [row for row in seed_rows() if row["ablation"] == wildcards.ablation]
    return [{**row, "log": TRAIN_LOG.format(train_key=row["keys"]["train"], seed=row["seed"])} for row in rows]
