# eval: the model is rebuilt from the compressed artifact alone, so the score is the score of what
# would be submitted. prequant scores the unquantized EMA model with the same settings (the gap).


rule eval:
    input:
        blob=upstream("eval", "eval_key", "compress", ARTIFACT_DIR + "/model.blob"),
        val=upstream("eval", "eval_key", "shards", SHARDS_DIR + "/val"),
        tokenizer=upstream("eval", "eval_key", "tokenizer", TOK_DIR + "/tokenizer.model"),
    output:
        summary=EVAL_DIR + "/eval.json",
    params:
        cfg=stage_params("eval", "eval_key"),
        mode="artifact",
        device=lambda w: RUNS.ablation_for("eval", w.eval_key).cfg["train"]["device"],
    resources:
        gpu=lambda w: 1 if RUNS.ablation_for("eval", w.eval_key).cfg["train"]["device"] == "cuda" else 0,
    log:
        LOG_DIR + "/eval/{eval_key}_seed{seed}.log",
    script:
        "../workflow/scripts/eval.py"


rule eval_prequant:
    input:
        model=upstream("prequant", "prequant_key", "train", TRAIN_DIR + "/model.pt"),
        val=upstream("prequant", "prequant_key", "shards", SHARDS_DIR + "/val"),
        tokenizer=upstream("prequant", "prequant_key", "tokenizer", TOK_DIR + "/tokenizer.model"),
    output:
        summary=PREQUANT_DIR + "/eval.json",
    params:
        cfg=stage_params("prequant", "prequant_key"),
        mode="prequant",
        device=lambda w: RUNS.ablation_for("prequant", w.prequant_key).cfg["train"]["device"],
    resources:
        gpu=lambda w: 1 if RUNS.ablation_for("prequant", w.prequant_key).cfg["train"]["device"] == "cuda" else 0,
    log:
        LOG_DIR + "/eval_prequant/{prequant_key}_seed{seed}.log",
    script:
        "../workflow/scripts/eval.py"
