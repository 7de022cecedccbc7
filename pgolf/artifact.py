"""Compress stage: the submitted artifact = compressed quantized model + the packed code that runs it.

Serialized layout (little-endian, no pickle, so loading runs no code and the bytes are the same on
every machine):

    MAGIC (8 bytes) | version u16 | header_len u32 | header JSON (utf-8) | payload

The header holds the model config and, per tensor, its kind, shape and byte ranges in the payload,
plus the payload length and CRC32 so a truncated or corrupted file fails loudly. The payload groups
all int8 codes, then all fp16 scales, then fp16 passthrough tensors: like bytes next to like bytes
compress better than interleaved ones.

A compressed blob starts with a 4-byte codec tag, so `decompress` needs nothing but the blob.
"""
from __future__ import annotations

import ast
import hashlib
import json
import logging
import lzma
import os
import struct
import zlib
from pathlib import Path

import brotli
import numpy as np
import torch
import zstandard

from pgolf import ARTIFACT_LIMIT_BYTES, io
from pgolf.gptq import dequantize

log = logging.getLogger(__name__)

MAGIC = b"PGOLFQM\x00"
VERSION = 1
_PREFIX = struct.Struct("<8sHI")  # magic, version, header_len

# codec -> (tag, default level, valid levels). lzma always adds PRESET_EXTREME on top of the preset.
CODECS = {"brotli": (b"PGZb", 11, range(0, 12)), "lzma": (b"PGZx", 9, range(0, 10)),
          "zstd": (b"PGZz", 22, range(1, 23))}
_TAG_TO_CODEC = {tag: codec for codec, (tag, _, _) in CODECS.items()}

# Where the code a submission needs starts: training (which also collects the Hessians), quantization,
# compression and evaluation. Code bytes count these modules plus every pgolf module they import.
CODE_ENTRY_MODULES = ("pgolf.train", "pgolf.gptq", "pgolf.artifact", "pgolf.evaluate")

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


def resolve_level(codec: str, level) -> int:
    if codec not in CODECS:
        raise ValueError(f"compress.codec must be one of {sorted(CODECS)}, got {codec!r}")
    _, default, valid = CODECS[codec]
    if level is None:
        return default
    if level not in valid:
        raise ValueError(f"compress.level {level} is out of range for {codec} ({valid.start}..{valid.stop - 1}); "
                         f"null picks {default}")
    return level


def compress(data: bytes, codec: str = "brotli", level: int | None = None) -> bytes:
    level = resolve_level(codec, level)
    if codec == "brotli":
        body = brotli.compress(data, quality=level)
    elif codec == "lzma":
        body = lzma.compress(data, format=lzma.FORMAT_XZ, preset=level | lzma.PRESET_EXTREME)
    else:
        body = zstandard.ZstdCompressor(level=level, write_content_size=True).compress(data)
    return CODECS[codec][0] + body


def decompress(blob: bytes) -> bytes:
    codec = _TAG_TO_CODEC.get(bytes(blob[:4]))
    if codec is None:
        raise ValueError(f"not a pgolf compressed blob: unknown codec tag {bytes(blob[:4])!r}")
    body = blob[4:]
    try:
        if codec == "brotli":
            return brotli.decompress(body)
        if codec == "lzma":
            return lzma.decompress(body, format=lzma.FORMAT_XZ)
        return zstandard.ZstdDecompressor().decompress(body)
    except (brotli.error, lzma.LZMAError, EOFError, zstandard.ZstdError) as err:
        raise ValueError(f"{codec} blob is corrupt or truncated: {err}") from None


def dequantized_state_dict(quantized: dict) -> dict:
    """fp32 state dict: q * scale for quantized tensors, fp16 -> fp32 for passthrough."""
    return {name: dequantize(t["q"], t["scale"]) if t["kind"] == "quant" else t["tensor"].float()
            for name, t in quantized.items()}


def load_model_from_artifact(blob_path):
    """The only way eval gets a model: compressed blob -> quantized tensors -> fp32 GPT."""
    from pgolf.model import build_model  # late: the compress stage never needs the model code

    quantized, model_config = deserialize(decompress(Path(blob_path).read_bytes()))
    model = build_model(model_config)
    model.load_state_dict(dequantized_state_dict(quantized), strict=True)
    return model, model_config


# ---- code bytes --------------------------------------------------------------------------------------
# The packed file is one self-contained Python file: a stub plus lzma(JSON {module: source}) as a latin-1
# string literal (the coding line makes every byte one character; only 5 byte values need an escape, so
# the literal is ~2% larger than the lzma bytes, where base85 text is 25% larger). Executing it installs
# an import hook that serves those modules, so `import pgolf.model` works with no pgolf checkout present.
# Its size on disk is what the artifact's code costs. get_source answers None for a name it lacks:
# linecache asks it for "__main__" when `python code.py pgolf.train` imports torch.
_STUB = '''# coding: latin-1
import importlib.abc,importlib.util,json,lzma,runpy,sys
S=json.loads(lzma.decompress({blob}.encode("latin-1")))
class F(importlib.abc.MetaPathFinder,importlib.abc.InspectLoader):
 def find_spec(s,n,p=None,t=None):
  if n in S:return importlib.util.spec_from_loader(n,s,origin="packed:"+n,is_package=s.is_package(n))
  if n.split(".")[0]in S:raise ModuleNotFoundError(n)
 def is_package(s,n):return any(k.startswith(n+".") for k in S)
 def get_source(s,n):return S.get(n)
 def get_code(s,n):return compile(S[n],"packed:"+n,"exec")
sys.meta_path.insert(0,F())
if __name__=="__main__"and len(sys.argv)>1:sys.argv=sys.argv[1:];runpy.run_module(sys.argv[0],run_name="__main__")
'''


def _module_path(root: Path, mod: str) -> Path:
    path = root.joinpath(*mod.split("."))
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def _imported_modules(source: str, package: str) -> set:
    """Modules of `package` that `source` imports, at top level or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == package)
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == package:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)  # `from pgolf import io`
    return found


def module_sources(entry_modules=CODE_ENTRY_MODULES, root: Path | None = None) -> dict:
    """{module: source} for the entry modules that exist under root and the package modules they import."""
    root = root or Path(__file__).resolve().parent.parent
    todo = [m for m in entry_modules if _module_path(root, m).exists()]
    sources = {}
    while todo:
        mod = todo.pop()
        path = _module_path(root, mod)
        if mod in sources or not path.exists():
            continue  # `from pgolf import ARTIFACT_LIMIT_BYTES` names an attribute, not a module
        sources[mod] = path.read_text()
        parts = mod.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # parent packages
        todo += sorted(_imported_modules(sources[mod], parts[0]))
    return dict(sorted(sources.items()))


def minify(source: str) -> str:
    """`source` without comments and docstrings (ast.unparse drops comments); the same code otherwise.
    A module that reads its own `__doc__` (train's argparse description) keeps its module docstring."""
    # Packed code bytes count against the 16 MB artifact limit; comments and docstrings are dead weight there.
    tree = ast.parse(source)
    keep_module_doc = any(isinstance(n, ast.Name) and n.id == "__doc__" for n in ast.walk(tree))
    for node in ast.walk(tree):
        if not isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        body = node.body
        if (body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str) and not (node is tree and keep_module_doc)):
            node.body = body[1:] or [ast.Pass()]
    return ast.unparse(tree) + "\n"


# Bytes a latin-1 string literal cannot hold as themselves: NUL (refused in source), the line ends, the
# quote and the backslash. NUL as \x00, since \0 before a digit would read as an octal escape.
_LITERAL_ESCAPES = {0: "\\x00", 10: "\\n", 13: "\\r", 34: '\\"', 92: "\\\\"}


def latin1_literal(data: bytes) -> str:
    """A Python string literal whose .encode("latin-1") is `data`, in a file with a latin-1 coding line."""
    return '"' + "".join(_LITERAL_ESCAPES.get(b, chr(b)) for b in data) + '"'


def packed_sources(entry_modules=CODE_ENTRY_MODULES, root: Path | None = None) -> dict:
    """{module: minified source}: what the packed code file carries."""
    return {mod: minify(src) for mod, src in module_sources(entry_modules, root).items()}


def packed_sources_sha256(entry_modules=CODE_ENTRY_MODULES, root: Path | None = None) -> str:
    """Changes exactly when the packed code would (not on comment or docstring edits); the workflow's
    compress rule carries it as a param, so Snakemake re-runs compress when the code changes."""
    canonical = json.dumps(packed_sources(entry_modules, root), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def pack_code(entry_modules=CODE_ENTRY_MODULES, root: Path | None = None) -> bytes:
    """The packed code file's bytes (latin-1 source: write them as they are)."""
    sources = packed_sources(entry_modules, root)
    packed = lzma.compress(json.dumps(sources, separators=(",", ":")).encode(), preset=9 | lzma.PRESET_EXTREME)
    return _STUB.format(blob=latin1_literal(packed)).encode("latin-1")


def compress_artifact(quant_bin, cfg: dict, out_blob, out_code, out_artifact_json) -> dict:
    """Compress stage main: quant.bin -> compressed blob + code.py + artifact.json (sizes from disk)."""
    data = Path(quant_bin).read_bytes()
    deserialize(data)  # refuse to ship a damaged quant.bin
    level = resolve_level(cfg["codec"], cfg["level"])
    blob = compress(data, cfg["codec"], level)
    if decompress(blob) != data:
        raise RuntimeError(f"{cfg['codec']} round trip of {quant_bin} is not bit-exact")
    code = pack_code()  # build everything before writing anything: a failure leaves no outputs
    io.write_bytes(out_blob, blob)
    io.write_bytes(out_code, code)
    model_bytes, code_bytes = os.path.getsize(out_blob), os.path.getsize(out_code)
    summary = {"model_bytes": model_bytes, "code_bytes": code_bytes, "total_bytes": model_bytes + code_bytes,
               "limit_bytes": ARTIFACT_LIMIT_BYTES, "fits": model_bytes + code_bytes <= ARTIFACT_LIMIT_BYTES,
               "codec": cfg["codec"], "level": level, "quant_bytes": len(data),
               "code_modules": sorted(module_sources())}
    io.write_json(out_artifact_json, summary)
    log.info("artifact: model %d + code %d = %d bytes (limit %d, fits=%s)", model_bytes, code_bytes,
             summary["total_bytes"], ARTIFACT_LIMIT_BYTES, summary["fits"])
    return summary
