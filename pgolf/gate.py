"""GPU gate: before training, time a matrix multiply and a device-to-device copy on every device of the
job (a few seconds), record the figures, and refuse a device below the config's floor, so a slow GPU
fails the job at once (a retry gets another machine) instead of making a slow run.

    python -m pgolf.gate --device cuda --nproc 8 --out gate.json

runs as its own process, so its CUDA contexts are gone before torchrun starts the ranks. On CUDA the
GEMM is bf16; on CPU the same timing in fp32 (tests set a floor above the machine's figure).
Copy bandwidth counts bytes read plus bytes written, as CUDA's bandwidthTest reports device-to-device.
"""
from __future__ import annotations

import argparse
import time

import torch

from pgolf.io import write_json

# (GEMM side, copy bytes) per device kind: large enough to reach the hardware's rate, small enough for seconds.
SIZES = {"cuda": (8192, 1 << 30), "cpu": (512, 1 << 25)}
REPEATS = 10


class GateError(RuntimeError):
    """A device of the job measured below the configured floor."""


def _seconds(fn, device: torch.device, repeats: int = REPEATS) -> float:
    """Mean wall seconds of fn() after one untimed call (allocation, kernel selection)."""
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / repeats


def measure(device: torch.device) -> dict:
    """TFLOP/s of an n x n GEMM and GB/s of a copy (read + write) on one device."""
    n, copy_bytes = SIZES[device.type]
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    gemm_seconds = _seconds(lambda: a @ b, device)
    src = torch.empty(copy_bytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    copy_seconds = _seconds(lambda: dst.copy_(src), device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return {"device": str(device), "name": name, "dtype": str(dtype).removeprefix("torch."),
            "tflops": 2 * n**3 / gemm_seconds / 1e12, "gbps": 2 * copy_bytes / copy_seconds / 1e9}


def job_devices(device_pref: str, nproc: int) -> list[torch.device]:
    """The devices the job's ranks will use: cuda:0..nproc-1 of the visible ones, or the CPU once."""
    use_cuda = device_pref == "cuda" or (device_pref == "auto" and torch.cuda.is_available())
    return [torch.device("cuda", i) for i in range(nproc)] if use_cuda else [torch.device("cpu")]


def failures(measured: list[dict], min_tflops: float | None, min_gbps: float | None) -> list[str]:
    """One line per device below a floor, naming it."""
    out = []
    for m in measured:
        if min_tflops is not None and m["tflops"] < min_tflops:
            out.append(f"{m['device']} ({m['name']}): {m['dtype']} GEMM {m['tflops']:.2f} TFLOP/s < gate.min_tflops "
                       f"{min_tflops}")
        if min_gbps is not None and m["gbps"] < min_gbps:
            out.append(f"{m['device']} ({m['name']}): copy {m['gbps']:.1f} GB/s < gate.min_gbps {min_gbps}")
    return out


def check(record: dict) -> None:
    """Raise GateError naming every slow device of a gate record (what main writes)."""
    slow = failures(record["devices"], record["min_tflops"], record["min_gbps"])
    if slow:
        raise GateError("GPU gate: " + "; ".join(slow) + ". Retry on another machine or pod, or lower the floor "
                        "in the config's gate: section.")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pgolf.gate", description="time a GEMM and a copy per device")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--nproc", type=int, default=1, help="devices the job's ranks will use")
    parser.add_argument("--min-tflops", type=float, default=None)
    parser.add_argument("--min-gbps", type=float, default=None)
    parser.add_argument("--out", required=True, help="gate.json to write")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    record = {"devices": [measure(d) for d in job_devices(args.device, args.nproc)],
              "min_tflops": args.min_tflops, "min_gbps": args.min_gbps}
    write_json(args.out, record)
    check(record)


if __name__ == "__main__":
    main()
