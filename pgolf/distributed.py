"""Join torchrun's process group when launched by it; one process otherwise (the train and eval stages)."""
from __future__ import annotations

import os

import torch
import torch.distributed as dist


def init_distributed(device_pref: str) -> tuple[int, int, torch.device]:
    """(rank, world_size, device). Under torchrun joins the process group: nccl on GPU, gloo on CPU."""
    if device_pref not in ("auto", "cpu", "cuda"):
        raise ValueError(f"train.device={device_pref!r}: expected auto, cpu or cuda")
    use_cuda = device_pref == "cuda" or (device_pref == "auto" and torch.cuda.is_available())
    if use_cuda and not torch.cuda.is_available():
        raise RuntimeError("train.device=cuda but no CUDA device is available")
    rank, world_size = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if "WORLD_SIZE" in os.environ and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", device_id=device if use_cuda else None)
    return rank, world_size, device
