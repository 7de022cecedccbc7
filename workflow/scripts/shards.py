"""Snakemake entry point: the shards stage (pgolf.shards) → train/ and val/ shard directories + manifest.json."""
import logging

from pgolf.shards import build_shards

logging.basicConfig(filename=snakemake.log[0], level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
manifest = build_shards(snakemake.input.docs, int(snakemake.params.num_val_docs), snakemake.input.tokenizer,
                        int(snakemake.params.cfg["tokens_per_shard"]), snakemake.output.train, snakemake.output.val,
                        snakemake.output.manifest)
logging.info("shards: %s", {split: {k: v for k, v in info.items() if k != "shards"}
                            for split, info in manifest["splits"].items()})
