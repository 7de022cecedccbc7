# eval: the model is rebuilt from the compressed artifact alone, so the score is the score of what
# would be submitted. eval_prequant scores the unquantized EMA model with the same settings (the gap).


rule eval:
    input:
        blob=upstream("eval", "compress", ARTIFACT_BLOB),
        val=upstream("eval", "shards", VAL_SHARDS),
        tokenizer=upstream("eval", "tokenizer", TOKENIZER_MODEL),
    output:
        summary=EVAL_JSON,
    log:
        "results/logs/eval/{eval_key}_seed{seed}.log",
    resources:
        gpu=eval_gpus("eval"),
    params:
        cfg=stage_params("eval"),
        mode="artifact",
        device=lambda w: stage_config("eval", w)["train"]["device"],
    script:
        "../workflow/scripts/eval.py"


rule eval_prequant:
    input:
        model=upstream("prequant", "train", MODEL_PT),
        val=upstream("prequant", "shards", VAL_SHARDS),
        tokenizer=upstream("prequant", "tokenizer", TOKENIZER_MODEL),
    output:
        summary=PREQUANT_JSON,
    log:
        "results/logs/eval_prequant/{prequant_key}_seed{seed}.log",
    resources:
        gpu=eval_gpus("prequant"),
    params:
        cfg=stage_params("prequant"),
        mode="prequant",
        device=lambda w: stage_config("prequant", w)["train"]["device"],
    script:
        "../workflow/scripts/eval.py"
