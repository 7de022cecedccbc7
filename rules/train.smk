# train: torchrun over the TRAIN shards only. The validation directory is never an input here,
# which is what makes "no validation data in training" structural rather than a promise.


rule train:
    input:
        train=upstream("train", "shards", TRAIN_SHARDS),
        tokenizer=upstream("train", "tokenizer", TOKENIZER_MODEL),
    output:
        model=MODEL_PT,
        hessians=HESSIANS_PT,
        log_txt=TRAIN_LOG,
        summary=TRAIN_JSON,
    log:
        "results/logs/train/{train_key}_seed{seed}.log",
    resources:
        gpu=train_gpus,
        runtime=30,
    params:
        cfg=stage_params("train"),
        abort=lambda w: stage_config("train", w)["abort"],
    script:
        "../workflow/scripts/train.py"
