# docs → tokenizer → shards. Validation = the first docs.num_val_docs documents, in file order.


rule docs:
    output:
        jsonl=DOCS_JSONL,
        meta=DOCS_META,
    log:
        "results/logs/docs/{docs_key}.log",
    params:
        cfg=stage_params("docs"),
    script:
        "../workflow/scripts/docs.py"


rule tokenizer:
    input:
        unpack(tokenizer_inputs),
    output:
        model=TOKENIZER_MODEL,
        meta=TOKENIZER_META,
    log:
        "results/logs/tokenizer/{tok_key}.log",
    params:
        cfg=stage_params("tokenizer"),
        num_val_docs=lambda w: stage_config("tokenizer", w)["docs"]["num_val_docs"],
    script:
        "../workflow/scripts/tokenizer.py"


rule shards:
    input:
        unpack(shards_inputs),
    output:
        train=directory(TRAIN_SHARDS),
        val=directory(VAL_SHARDS),
        manifest=SHARDS_MANIFEST,
    log:
        "results/logs/shards/{shards_key}.log",
    params:
        cfg=stage_params("shards"),
        num_val_docs=lambda w: stage_config("shards", w)["docs"]["num_val_docs"],
    script:
        "../workflow/scripts/shards.py"
