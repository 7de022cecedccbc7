# train: torchrun over the TRAIN shards only. The validation directory is never an input here,
# which is what makes "no validation data in training" structural rather than a promise.


rule train:
    input:
        train=upstream("train", "train_key", "shards", SHARDS_DIR + "/train"),
        tokenizer=upstream("train", "train_key", "tokenizer", TOK_DIR + "/tokenizer.model"),
    output:
        model=TRAIN_DIR + "/model.pt",
        hessians=TRAIN_DIR + "/hessians.pt",
        log_txt=TRAIN_DIR + "/train.log",
        summary=TRAIN_DIR + "/train.json",
    params:
        cfg=stage_params("train", "train_key"),
    resources:
        gpu=train_gpus,
        runtime=30,
    log:
        LOG_DIR + "/train/{train_key}_seed{seed}.log",
    script:
        "../workflow/scripts/train.py"
