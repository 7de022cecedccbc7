"""The quantized-model format: what the quantize stage writes and the compress and eval stages read.

Serialized layout (little-endian, no pickle, so loading runs no code and the bytes are the same on
every machine):

    MAGIC (8 bytes) | version u16 | header_len u32 | header JSON (utf-8) | payload

The header holds the model config and, per tensor, its kind, shape and byte ranges in the payload,
plus the payload length and CRC32 so a truncated or corrupted file fails loudly. The payload groups
all int8 codes, then all fp16 scales, then fp16 passthrough tensors: like bytes next to like bytes
compress better than interleaved ones.

In memory a quantized model is {name: {"kind": "quant", "q", "scale", "bits"} | {"kind": "fp16", "tensor"}}:
int8 codes q with one fp16 scale per output row (W ~= q * scale), or a tensor kept in fp16.
"""
from __future__ import annotations

import json
import struct
import zlib

import numpy as np
import torch

MAGIC = b"PGOLFQM\x00"
VERSION = 1
_PREFIX = struct.Struct("<8sHI")  # magic, version, header_len

_NP_DTYPES = {"int8": np.dtype("<i1"), "float16": np.dtype("<f2")}


def _tensor_bytes(t: torch.Tensor, dtype: str) -> bytes:
    return t.detach().cpu().contiguous().numpy().astype(_NP_DTYPES[dtype], copy=False).tobytes()


def serialize(quantized: dict, model_config: dict) -> bytes:
    """quantized: {name: {"kind": "quant", "q", "scale", "bits"} | {"kind": "fp16", "tensor"}}."""
    sections = {"q": [], "scale": [], "fp16": []}
    entries = []
    for name, t in quantized.items():
        if t["kind"] == "quant":
            entries.append({"name": name, "kind": "quant", "shape": list(t["q"].shape), "bits": int(t["bits"])})
            sections["q"].append((entries[-1], "q", _tensor_bytes(t["q"].to(torch.int8), "int8")))
            sections["scale"].append((entries[-1], "scale", _tensor_bytes(t["scale"].to(torch.float16), "float16")))
        elif t["kind"] == "fp16":
            entries.append({"name": name, "kind": "fp16", "shape": list(t["tensor"].shape)})
            sections["fp16"].append((entries[-1], "data", _tensor_bytes(t["tensor"].to(torch.float16), "float16")))
        else:
            raise ValueError(f"{name}: unknown tensor kind {t['kind']!r}")
    chunks, offset = [], 0
    for section in sections.values():
        for entry, field, data in section:
            entry[f"{field}_offset"], entry[f"{field}_bytes"] = offset, len(data)
            chunks.append(data)
            offset += len(data)
    payload = b"".join(chunks)
    header = json.dumps({"model_config": model_config, "tensors": entries, "payload_bytes": len(payload),
                         "payload_crc32": zlib.crc32(payload)}, separators=(",", ":")).encode()
    return _PREFIX.pack(MAGIC, VERSION, len(header)) + header + payload


def deserialize(data: bytes) -> tuple[dict, dict]:
    """Inverse of serialize; raises ValueError naming what is wrong with a damaged file."""
    if len(data) < _PREFIX.size:
        raise ValueError(f"artifact truncated: {len(data)} bytes is shorter than the {_PREFIX.size}-byte prefix")
    magic, version, header_len = _PREFIX.unpack_from(data)
    if magic != MAGIC:
        raise ValueError(f"not a pgolf quantized model: magic {magic!r} != {MAGIC!r}")
    if version != VERSION:
        raise ValueError(f"unsupported artifact version {version} (this code reads {VERSION})")
    start = _PREFIX.size + header_len
    try:
        header = json.loads(data[_PREFIX.size:start])
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"artifact header is corrupt or truncated: {err}") from None
    payload = data[start:]
    if len(payload) != header["payload_bytes"]:
        raise ValueError(f"artifact payload is {len(payload)} bytes, header says {header['payload_bytes']}")
    if zlib.crc32(payload) != header["payload_crc32"]:
        raise ValueError("artifact payload CRC32 mismatch: the file is corrupt")

    def read(entry, field, dtype):
        raw = payload[entry[f"{field}_offset"]:entry[f"{field}_offset"] + entry[f"{field}_bytes"]]
        return torch.from_numpy(np.frombuffer(raw, dtype=_NP_DTYPES[dtype]).copy())

    quantized = {}
    for e in header["tensors"]:
        if e["kind"] == "quant":
            quantized[e["name"]] = {"kind": "quant", "bits": e["bits"],
                                    "q": read(e, "q", "int8").reshape(e["shape"]),
                                    "scale": read(e, "scale", "float16")}
        else:
            quantized[e["name"]] = {"kind": "fp16", "tensor": read(e, "data", "float16").reshape(e["shape"])}
    return quantized, header["model_config"]

def dequantize(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return q.float() * scale.float()[:, None]


def dequantized_state_dict(quantized: dict) -> dict:
    """fp32 state dict: q * scale for quantized tensors, fp16 -> fp32 for passthrough."""
    return {name: dequantize(t["q"], t["scale"]) if t["kind"] == "quant" else t["tensor"].float()
            for name, t in quantized.items()}
