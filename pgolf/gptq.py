"""Quantize stage: GPTQ (Frantar et al., 2022) with SDClip per-row scales, and a round-to-nearest baseline.

Every 2-D matrix W [out, in] becomes int8 codes q and one fp16 scale per output row, W ~= q * scale.
The scale comes from a clip rule, not from max|W|: clip = clip_sigmas * std(row), scale = clip / qmax,
so a few outlier weights saturate instead of stretching the grid for every other weight (SDClip).

GPTQ then picks the codes column by column, pushing each column's rounding error onto the columns
not yet quantized, weighted by the inverse Hessian H = X^T X of the layer's inputs. That minimises
the error of the layer's *outputs* X W^T on calibration data, which is what the loss sees.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from pgolf import io
from pgolf.quant_format import dequantize, serialize

log = logging.getLogger(__name__)

EMBED_NAME = "tok_emb.weight"


def _qmax(bits: int) -> int:
    if not 2 <= bits <= 8:
        raise ValueError(f"bits must be in 2..8 (codes are stored as int8), got {bits}")
    return 2 ** (bits - 1) - 1


def sdclip_scale(W: torch.Tensor, bits: int, clip_sigmas: float) -> torch.Tensor:
    """Per-row scale = clip_sigmas * std(row) / qmax, rounded to fp16 (the stored precision).

    std is the sample standard deviation (Bessel-corrected, torch's default), as in the record, whose
    clip_sigmas (12.85 / 20) were tuned with it; the population std is 0.1% smaller at 512 columns,
    which changes ~10% of GPTQ codes and enlarges the compressed artifact."""
    W = W.float()
    std = W.std(dim=1) if W.shape[1] > 1 else W.new_zeros(W.shape[0])  # one column: no spread, not NaN
    clip = clip_sigmas * std
    # An all-equal row has std 0; the smallest fp16 subnormal keeps the division finite (codes become 0).
    scale = (clip / _qmax(bits)).clamp_min(2.0**-24)
    return scale.to(torch.float16)


def _round(w: torch.Tensor, scale: torch.Tensor, qmax: int) -> torch.Tensor:
    return torch.clamp(torch.round(w / scale), -qmax, qmax)


def quantize_rtn(W: torch.Tensor, bits: int, clip_sigmas: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Round-to-nearest with the SDClip scale: the baseline GPTQ must beat."""
    scale = sdclip_scale(W, bits, clip_sigmas)
    q = _round(W.float(), scale.float()[:, None], _qmax(bits))
    return q.to(torch.int8), scale


def check_hessian(H: torch.Tensor, in_features: int, name: str) -> None:
    if H.ndim != 2 or tuple(H.shape) != (in_features, in_features):
        raise ValueError(f"{name}: Hessian must be [{in_features}, {in_features}], got {list(H.shape)}")
    if not torch.isfinite(H).all():
        raise ValueError(f"{name}: Hessian contains non-finite values (NaN/inf); re-run the train stage")


def quantize_gptq(W: torch.Tensor, H: torch.Tensor, bits: int, clip_sigmas: float, block_size: int, damp: float,
                  act_order: bool, name: str = "weight") -> tuple[torch.Tensor, torch.Tensor]:
    """GPTQ codes for W [out, in] given the input Hessian H [in, in]; same scales as quantize_rtn."""
    check_hessian(H, W.shape[1], name)
    qmax = _qmax(bits)
    scale = sdclip_scale(W, bits, clip_sigmas)  # from the original weights, so RTN and GPTQ share a grid
    s = scale.float()[:, None]
    W = W.detach().float().clone()
    H = H.detach().to(W.device, torch.float32).clone()
    ncols = W.shape[1]

    # A column whose input is always zero never reaches the output: any code works, 0 is cheapest,
    # and a unit diagonal keeps H invertible.
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0

    # Activation order: quantize the columns with the largest input energy first, while many columns
    # remain to absorb their error.
    perm = torch.argsort(torch.diag(H), descending=True) if act_order else torch.arange(ncols, device=W.device)
    W, H = W[:, perm], H[perm][:, perm]

    # Dampening keeps the inverse well conditioned when calibration tokens are few.
    H.diagonal().add_(damp * torch.mean(torch.diag(H)))
    try:
        Hinv = torch.cholesky_inverse(torch.linalg.cholesky(H))
        # Upper Cholesky factor of H^-1: row i holds the update weights for columns after i.
        Hinv = torch.linalg.cholesky(Hinv, upper=True)
    except torch.linalg.LinAlgError as err:
        raise ValueError(f"{name}: Hessian is not positive definite after damp={damp}; raise quant.damp") from err

    Q = torch.zeros_like(W)
    for i1 in range(0, ncols, block_size):
        i2 = min(i1 + block_size, ncols)
        W1, Hinv1 = W[:, i1:i2].clone(), Hinv[i1:i2, i1:i2]
        Err1 = torch.zeros_like(W1)
        for i in range(i2 - i1):
            w = W1[:, i]
            q = _round(w, s[:, 0], qmax)
            Q[:, i1 + i] = q
            err = (w - q * s[:, 0]) / Hinv1[i, i]
            # Inside the block: update the remaining columns right away (they are quantized next).
            W1[:, i:] -= err[:, None] * Hinv1[i, i:][None, :]
            Err1[:, i] = err
        # Lazy batch update: the columns after the block get the whole block's error in one matmul.
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]

    q = torch.empty_like(Q)
    q[:, perm] = Q  # undo the activation-order permutation
    return q.to(torch.int8), scale


def output_error_ratio(W: torch.Tensor, Wq: torch.Tensor, H: torch.Tensor) -> float:
    """trace(E H E^T) / trace(W H W^T): relative squared error of the layer outputs on calibration data."""
    W, E, H = W.float(), (W.float() - Wq.float()), H.float()
    denom = float(((W @ H) * W).sum())
    return float(((E @ H) * E).sum()) / denom if denom > 0 else 0.0


def quantize_state_dict(state_dict: dict, hessians: dict, cfg: dict) -> dict:
    """Quantize every tensor by the rules of the `quant:` config section.

    Returns {"tensors": {name: {"kind": "quant", "q", "scale", "bits"} | {"kind": "fp16", "tensor"}},
             "stats": {name: {...}}}.
    """
    method = cfg["method"]
    if method not in ("gptq", "rtn"):
        raise ValueError(f"quant.method must be gptq or rtn, got {method!r}")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tensors, stats = {}, {}
    for name, W in state_dict.items():
        if not torch.is_floating_point(W):
            raise ValueError(f"{name}: dtype {W.dtype} is not floating point; cannot store it in the artifact")
        if W.ndim != 2 or W.numel() <= cfg["passthrough_max_numel"]:
            # Gains, norms and small tables cost few bytes and are sensitive: keep them in fp16.
            tensors[name] = {"kind": "fp16", "tensor": W.detach().to(torch.float16).cpu()}
            stats[name] = {"kind": "fp16", "numel": W.numel()}
            continue
        is_embed = name == EMBED_NAME
        bits = cfg["embed_bits"] if is_embed else cfg["bits"]
        clip_sigmas = cfg["embed_clip_sigmas"] if is_embed else cfg["clip_sigmas"]
        W = W.detach().float().to(device)
        H = hessians.get(name)
        used = method
        if method == "gptq" and H is None:
            log.warning("%s: no Hessian in the hessians file; falling back to round-to-nearest", name)
            used = "rtn"
        if used == "gptq":
            H = H.to(device, torch.float32)
            q, scale = quantize_gptq(W, H, bits, clip_sigmas, cfg["block_size"], cfg["damp"],
                                     cfg["act_order"], name=name)
        else:
            q, scale = quantize_rtn(W, bits, clip_sigmas)
        Wq = dequantize(q, scale)
        stat = {"kind": "quant", "method": used, "bits": bits, "clip_sigmas": clip_sigmas, "numel": W.numel(),
                "rel_weight_err": float((W - Wq).norm() / W.norm().clamp_min(1e-12)),
                "saturated_frac": float((q.abs() == _qmax(bits)).float().mean())}
        if H is not None:
            check_hessian(H, W.shape[1], name)
            stat["rel_output_err"] = output_error_ratio(W, Wq, H.to(device, torch.float32))
        tensors[name] = {"kind": "quant", "q": q.cpu(), "scale": scale.cpu(), "bits": bits}
        stats[name] = stat
    return {"tensors": tensors, "stats": stats}


def quantize_model(model_pt, hessians_pt, cfg: dict, out_quant_bin, out_quant_json) -> dict:
    """Quantize stage main: model.pt + hessians.pt -> quant.bin (serialized, uncompressed) + quant.json."""
    t0 = time.perf_counter()
    ckpt = _load(model_pt, ("model_config", "state_dict"))
    hessians = {k: v for k, v in _load(hessians_pt, ()).items() if not k.startswith("__")}
    result = quantize_state_dict(ckpt["state_dict"], hessians, cfg)
    data = serialize(result["tensors"], ckpt["model_config"])
    io.write_bytes(out_quant_bin, data)
    quant = [s for s in result["stats"].values() if s["kind"] == "quant"]
    out_errs = [s["rel_output_err"] for s in quant if "rel_output_err" in s]
    summary = {
        "cfg": cfg,
        "quant_bytes": len(data),
        "quant_seconds": time.perf_counter() - t0,
        "num_quantized_params": sum(s["numel"] for s in quant),
        "num_fp16_params": sum(s["numel"] for s in result["stats"].values() if s["kind"] == "fp16"),
        "mean_rel_weight_err": sum(s["rel_weight_err"] for s in quant) / max(len(quant), 1),
        "mean_rel_output_err": sum(out_errs) / len(out_errs) if out_errs else None,
        "tensors": result["stats"],
    }
    io.write_json(out_quant_json, summary)
    log.info("quantized %d tensors (%s) into %d bytes in %.1fs", len(quant), cfg["method"], len(data),
             summary["quant_seconds"])
    return summary


def _load(path, keys: tuple) -> dict:
    path = Path(path)
    obj = torch.load(path, map_location="cpu", weights_only=True)
    missing = [k for k in keys if k not in obj]
    if missing:
        raise KeyError(f"{path}: missing keys {missing}")
    return obj
