"""Snakemake entry point: an external training script as a cell (pgolf.external)."""
import logging
import os
import sys

from pgolf.external import ExternalScriptError, run_external
from pgolf.gate import GateError
from pgolf.gpus import place

logging.basicConfig(filename=snakemake.log[0], level=logging.INFO,  # noqa: F821 (injected by Snakemake)
                    format="%(asctime)s %(name)s %(message)s")
train = snakemake.params.train  # noqa: F821
gpus = int(getattr(snakemake.resources, "gpu", 0) or 0)  # noqa: F821
seed = int(snakemake.wildcards.seed)  # noqa: F821
with place(gpus) as placement:  # this job's own devices, held until it ends
    os.environ.update(placement.env())  # the script's ranks inherit CUDA_VISIBLE_DEVICES
    try:
        summary = run_external(
            dict(snakemake.params.cfg), train["max_wallclock_seconds"],  # noqa: F821
            data={"train_dir": snakemake.input.train, "val_dir": snakemake.input.val,  # noqa: F821
                  "tokenizer": snakemake.input.tokenizer, "vocab_size": snakemake.params.vocab_size},  # noqa: F821
            seed=seed, run_id=f"{snakemake.wildcards.external_key}_seed{seed}",  # noqa: F821
            outputs={"json": snakemake.output.summary, "log": snakemake.output.log_txt,  # noqa: F821
                     "artifact_dir": snakemake.output.artifact},  # noqa: F821
            nproc=gpus if gpus > 0 else int(train["nproc"]), device="cuda" if gpus > 0 else "cpu",
            threads=snakemake.threads, log_path=snakemake.log[0], placement=placement,  # noqa: F821
            gate=snakemake.config["gate"],  # noqa: F821 (as for training: floors are not params)
        )
    except (ExternalScriptError, GateError) as err:
        logging.error("%s", err)
        sys.exit(f"pgolf: {err}\n(full output: {snakemake.log[0]})")  # noqa: F821
logging.info("%s: %s val_bpb %.8f, %d bytes", summary["script"], summary["score_line"], summary["val_bpb"],
             summary["total_bytes"])
