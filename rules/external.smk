# external: an ablation with external.script runs that script (e.g. a record's train_gpt.py) under torchrun
# on the DAG's shards and tokenizer instead of train → quantize → compress → eval. It evaluates itself:
# its summary rows are flagged script_eval.


rule external:
    input:
        script=lambda w: RUNS.params("external", w.external_key)["script"],
        files=external_files,
        train=upstream("external", "shards", TRAIN_SHARDS),
        val=upstream("external", "shards", VAL_SHARDS),
        tokenizer=upstream("external", "tokenizer", TOKENIZER_MODEL),
    output:
        summary=EXTERNAL_JSON,
        log_txt=EXTERNAL_LOG,
        artifact=directory(EXTERNAL_ARTIFACT),
    log:
        "results/logs/external/{external_key}_seed{seed}.log",
    resources:
        gpu=lambda w: _gpus(stage_config("external", w)["train"]),
        runtime=30,
    params:
        cfg=stage_params("external"),
        train=lambda w: stage_config("external", w)["train"],
        vocab_size=lambda w: stage_config("external", w)["tokenizer"]["vocab_size"],
    script:
        "../workflow/scripts/external.py"
