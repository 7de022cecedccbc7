"""Snakemake entry point: the docs stage (pgolf.docs) → docs.jsonl + docs.json."""
import logging

from pgolf.docs import build_docs

logging.basicConfig(filename=snakemake.log[0], level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
meta = build_docs(snakemake.params.cfg, snakemake.output.jsonl, snakemake.output.meta)
logging.info("docs meta: %s", meta)
