# quantize (GPTQ with the train stage's Hessians) → compress (serialize + brotli) → artifact.json.
from pgolf.artifact import packed_sources_sha256


rule quantize:
    input:
        model=upstream("quant", "train", MODEL_PT),
        hessians=upstream("quant", "train", HESSIANS_PT),
    output:
        quant=QUANT_BIN,
        summary=QUANT_JSON,
    log:
        "results/logs/quant/{quant_key}_seed{seed}.log",
    resources:
        gpu=quant_gpus,
    params:
        cfg=stage_params("quant"),
    script:
        "../workflow/scripts/quantize.py"


# code_bytes count the packed pgolf sources: a change to them re-runs compress (Snakemake's params trigger).
PACKED_SOURCES_SHA256 = packed_sources_sha256()


rule compress:
    input:
        quant=upstream("compress", "quant", QUANT_BIN),
    output:
        blob=ARTIFACT_BLOB,
        code=ARTIFACT_CODE,
        summary=ARTIFACT_JSON,
    log:
        "results/logs/compress/{compress_key}_seed{seed}.log",
    params:
        cfg=stage_params("compress"),
        packed_sources_sha256=PACKED_SOURCES_SHA256,
    script:
        "../workflow/scripts/compress.py"
