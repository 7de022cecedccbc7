"""Timing helpers shared by the GPU checks of the fused kernels (softcap_ce_check.py, attention_ops_check.py)."""
import torch


def time_ms(fn, iters: int, warmup: int = 3) -> float:
    """Mean milliseconds per call of fn on the GPU (CUDA events around `iters` calls, after `warmup`)."""
    for _ in range(warmup):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters


def top_kernels(fn, rows: int = 25, calls: int = 1) -> str:
    """torch.profiler table of the GPU kernels of `calls` calls of fn, by self CUDA time."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    return prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=rows, max_name_column_width=120)
