"""Quantize rule: model.pt + hessians.pt -> quant.bin + quant.json (see pgolf/gptq.py)."""
import logging

from pgolf.gptq import quantize_model

logging.basicConfig(filename=snakemake.log[0], level=logging.INFO,  # noqa: F821 (injected by Snakemake)
                    format="%(asctime)s %(name)s %(levelname)s %(message)s")
quantize_model(snakemake.input.model, snakemake.input.hessians, dict(snakemake.params.cfg),  # noqa: F821
               snakemake.output.quant, snakemake.output.summary)  # noqa: F821
