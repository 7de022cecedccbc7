"""Snakemake entry point: score the compressed artifact (or the pre-quant model) on val shards, one rank per GPU."""
import logging

from pgolf.gpus import place
from pgolf.launch import run_eval

logging.basicConfig(filename=snakemake.log[0], level=logging.INFO,  # noqa: F821 (injected by Snakemake)
                    format="%(asctime)s %(message)s")
params, inputs = snakemake.params, snakemake.input  # noqa: F821
gpus = int(getattr(snakemake.resources, "gpu", 0) or 0)  # noqa: F821
with place(gpus) as placement:  # this job's own devices, held until it ends
    run_eval(params.mode, inputs.blob if params.mode == "artifact" else inputs.model, inputs.val, inputs.tokenizer,
             dict(params.cfg), params.device, snakemake.output.summary, snakemake.log[0],  # noqa: F821
             nproc=max(gpus, 1), threads=snakemake.threads, placement=placement)  # noqa: F821
