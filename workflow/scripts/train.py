"""Snakemake entry point: the train stage under torchrun (pgolf.launch -> pgolf.train)."""
import logging

from pgolf.gpus import place
from pgolf.launch import run_train

logging.basicConfig(filename=snakemake.log[0], level=logging.INFO,  # noqa: F821 (injected by Snakemake)
                    format="%(asctime)s %(name)s %(message)s")
cfg = dict(snakemake.params.cfg, abort=snakemake.params.abort)  # noqa: F821 (pgolf.train reads cfg["abort"])
gpus = int(getattr(snakemake.resources, "gpu", 0) or 0)  # noqa: F821
with place(gpus) as placement:  # this job's own devices, held until it ends
    run_train(
        cfg, snakemake.input.train, snakemake.input.tokenizer, int(snakemake.wildcards.seed),  # noqa: F821
        outputs={"model.pt": snakemake.output.model, "hessians.pt": snakemake.output.hessians,  # noqa: F821
                 "train.log": snakemake.output.log_txt, "train.json": snakemake.output.summary},  # noqa: F821
        log_path=snakemake.log[0], nproc=gpus if gpus > 0 else int(cfg["nproc"]),  # noqa: F821
        threads=snakemake.threads, placement=placement,  # noqa: F821
        # the floors decide which machines may train, not what is trained: read here, not as params, so a
        # changed floor does not re-run training
        gate=snakemake.config["gate"],  # noqa: F821
    )
