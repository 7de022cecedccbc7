"""Snakemake entry point: the tokenizer stage (pgolf.tokenizer) → tokenizer.model + tokenizer.json."""
import logging

from pgolf.tokenizer import build_tokenizer

logging.basicConfig(filename=snakemake.log[0], level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
meta = build_tokenizer(snakemake.params.cfg, snakemake.input.get("docs"), int(snakemake.params.num_val_docs),
                       snakemake.output.model, snakemake.output.meta)
logging.info("tokenizer meta: %s", meta)
