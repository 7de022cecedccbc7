"""Snakemake entry point: score the compressed artifact (or the pre-quant model) on val shards."""
import logging

from pgolf.evaluate import evaluate_files

logging.basicConfig(filename=snakemake.log[0], level=logging.INFO, format="%(asctime)s %(message)s")
model_path = snakemake.input.blob if snakemake.params.mode == "artifact" else snakemake.input.model
evaluate_files(snakemake.params.mode, model_path, snakemake.input.val, snakemake.input.tokenizer,
               snakemake.params.cfg, snakemake.params.device, snakemake.output.summary)
