# docs → tokenizer → shards. Validation = the first docs.num_val_docs documents, in file order.


rule docs:
    output:
        jsonl=DOCS_DIR + "/docs.jsonl",
        meta=DOCS_DIR + "/docs.json",
    params:
        cfg=stage_params("docs", "docs_key"),
    log:
        LOG_DIR + "/docs/{docs_key}.log",
    script:
        "../workflow/scripts/docs.py"


def tokenizer_inputs(wildcards):
    """Docs only when the tokenizer is trained here (not a given file or the published one)."""
    cfg = RUNS.params("tokenizer", wildcards.tok_key)
    if cfg["model"] or cfg["hf_repo"]:
        return {}
    return {"docs": upstream("tokenizer", "tok_key", "docs", DOCS_DIR + "/docs.jsonl")(wildcards)}


def shards_inputs(wildcards):
    """Docs only when the shards are built here; published shards need just the tokenizer."""
    inputs = {"tokenizer": upstream("shards", "shards_key", "tokenizer", TOK_DIR + "/tokenizer.model")(wildcards)}
    if RUNS.params("shards", wildcards.shards_key)["source"] == "build":
        inputs["docs"] = upstream("shards", "shards_key", "docs", DOCS_DIR + "/docs.jsonl")(wildcards)
    return inputs


rule tokenizer:
    input:
        unpack(tokenizer_inputs),
    output:
        model=TOK_DIR + "/tokenizer.model",
        meta=TOK_DIR + "/tokenizer.json",
    params:
        cfg=stage_params("tokenizer", "tok_key"),
        num_val_docs=lambda w: RUNS.ablation_for("tokenizer", w.tok_key).cfg["docs"]["num_val_docs"],
    log:
        LOG_DIR + "/tokenizer/{tok_key}.log",
    script:
        "../workflow/scripts/tokenizer.py"


rule shards:
    input:
        unpack(shards_inputs),
    output:
        train=directory(SHARDS_DIR + "/train"),
        val=directory(SHARDS_DIR + "/val"),
        manifest=SHARDS_DIR + "/manifest.json",
    params:
        cfg=stage_params("shards", "shards_key"),
        num_val_docs=lambda w: RUNS.ablation_for("shards", w.shards_key).cfg["docs"]["num_val_docs"],
    log:
        LOG_DIR + "/shards/{shards_key}.log",
    script:
        "../workflow/scripts/shards.py"
