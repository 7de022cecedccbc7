"""Files of the challenge's Hugging Face dataset repos (docs, tokenizers, pre-tokenized shards).

huggingface_hub caches every download, so a re-run of a stage reads the local copy.
"""
from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)


def download_dataset_file(repo_id: str, filename: str, revision: str | None = None,
                          cache_dir: str | None = None) -> Path:
    """Local path of `filename` in the HF *dataset* repo `repo_id` (downloaded once, then cached)."""
    from huggingface_hub import hf_hub_download

    log.info("downloading %s from HF dataset %s (revision %s)", filename, repo_id, revision or "main")
    return Path(hf_hub_download(repo_id=repo_id, filename=filename, revision=revision,
                                repo_type="dataset", cache_dir=cache_dir))
