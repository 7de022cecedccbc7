"""Snakemake entry point: the shards stage → train/ and val/ shard directories + manifest.json.

shards.source build tokenizes the docs (pgolf.shards); hf downloads the published shards (pgolf.published).
"""
import logging

from pgolf.published import fetch_published_shards
from pgolf.shards import build_shards

logging.basicConfig(filename=snakemake.log[0], level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
cfg = snakemake.params.cfg
if cfg["source"] == "hf":
    manifest = fetch_published_shards(cfg, snakemake.input.tokenizer, snakemake.output.train, snakemake.output.val,
                                      snakemake.output.manifest)
else:
    manifest = build_shards(snakemake.input.docs, int(snakemake.params.num_val_docs), snakemake.input.tokenizer,
                            int(cfg["tokens_per_shard"]), snakemake.output.train, snakemake.output.val,
                            snakemake.output.manifest)
logging.info("shards: %s", {split: {k: v for k, v in info.items() if k != "shards"}
                            for split, info in manifest["splits"].items()})
