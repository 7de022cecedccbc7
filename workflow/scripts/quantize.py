"""Quantize rule: model.pt + hessians.pt -> quant.bin + quant.json (see pgolf/gptq.py)."""
import logging
import os

from pgolf.gptq import quantize_model
from pgolf.gpus import place

logging.basicConfig(filename=snakemake.log[0], level=logging.INFO,  # noqa: F821 (injected by Snakemake)
                    format="%(asctime)s %(name)s %(levelname)s %(message)s")
gpus = int(getattr(snakemake.resources, "gpu", 0) or 0)  # noqa: F821
with place(gpus) as placement:  # GPTQ runs on CUDA when it can: on this job's own device
    os.environ.update(placement.env())  # before torch first touches CUDA
    quantize_model(snakemake.input.model, snakemake.input.hessians, dict(snakemake.params.cfg),  # noqa: F821
                   snakemake.output.quant, snakemake.output.summary)  # noqa: F821
