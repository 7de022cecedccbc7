# quantize (GPTQ with the train stage's Hessians) → compress (serialize + brotli) → artifact.json.


rule quantize:
    input:
        model=upstream("quant", "quant_key", "train", TRAIN_DIR + "/model.pt"),
        hessians=upstream("quant", "quant_key", "train", TRAIN_DIR + "/hessians.pt"),
    output:
        quant=QUANT_DIR + "/quant.bin",
        summary=QUANT_DIR + "/quant.json",
    params:
        cfg=stage_params("quant", "quant_key"),
    log:
        LOG_DIR + "/quant/{quant_key}_seed{seed}.log",
    script:
        "../workflow/scripts/quantize.py"


rule compress:
    input:
        quant=upstream("compress", "compress_key", "quant", QUANT_DIR + "/quant.bin"),
    output:
        blob=ARTIFACT_DIR + "/model.blob",
        code=ARTIFACT_DIR + "/code.py",
        summary=ARTIFACT_DIR + "/artifact.json",
    params:
        cfg=stage_params("compress", "compress_key"),
    log:
        LOG_DIR + "/compress/{compress_key}_seed{seed}.log",
    script:
        "../workflow/scripts/compress.py"
