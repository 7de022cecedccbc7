"""Compress rule: quant.bin -> model.bin.<codec> + code.py + artifact.json (see pgolf/artifact.py)."""
import logging

from pgolf.artifact import compress_artifact

logging.basicConfig(filename=snakemake.log[0], level=logging.INFO,  # noqa: F821 (injected by Snakemake)
                    format="%(asctime)s %(name)s %(levelname)s %(message)s")
compress_artifact(snakemake.input.quant, dict(snakemake.params.cfg), snakemake.output.blob,  # noqa: F821
                  snakemake.output.code, snakemake.output.summary)  # noqa: F821
