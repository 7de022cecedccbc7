"""Compress stage: the submitted artifact = compressed quantized model + the packed code that runs it.

The quantized model is read and checked in pgolf.quant_format's layout, then compressed whole.
A compressed blob starts with a 4-byte codec tag, so `decompress` needs nothing but the blob.
"""
from __future__ import annotations

import ast
import hashlib
import json
import logging
import lzma
import os
from pathlib import Path

import brotli
import zstandard

from pgolf import ARTIFACT_LIMIT_BYTES, io
from pgolf.quant_format import dequantized_state_dict, deserialize

log = logging.getLogger(__name__)

# codec -> (tag, default level, valid levels). lzma always adds PRESET_EXTREME on top of the preset.
CODECS = {"brotli": (b"PGZb", 11, range(0, 12)), "lzma": (b"PGZx", 9, range(0, 10)),
          "zstd": (b"PGZz", 22, range(1, 23))}
_TAG_TO_CODEC = {tag: codec for codec, (tag, _, _) in CODECS.items()}

# Where the code a submission needs starts: training (which also collects the Hessians), quantization,
# compression and evaluation. Code bytes count these modules plus every pgolf module they import.
CODE_ENTRY_MODULES = ("pgolf.train", "pgolf.gptq", "pgolf.artifact", "pgolf.evaluate")

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
'''
# code.py runs the module its first argument names; an exported train_gpt.py runs one fixed module.
_RUN_ARGV = 'if __name__=="__main__"and len(sys.argv)>1:sys.argv=sys.argv[1:];runpy.run_module(sys.argv[0],run_name="__main__")\n'
_RUN_FIXED = 'if __name__=="__main__":runpy.run_module("%s",run_name="__main__")\n'


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


def pack_code(entry_modules=CODE_ENTRY_MODULES, root: Path | None = None, extra_sources: dict | None = None,
              run_module: str | None = None) -> bytes:
    """The packed code file's bytes (latin-1 source: write them as they are). `extra_sources` adds modules
    ({name: source}); `run_module` makes the file run that module when executed, whatever its arguments."""
    sources = {**packed_sources(entry_modules, root), **{m: minify(s) for m, s in (extra_sources or {}).items()}}
    packed = lzma.compress(json.dumps(sources, separators=(",", ":")).encode(), preset=9 | lzma.PRESET_EXTREME)
    tail = _RUN_FIXED % run_module if run_module else _RUN_ARGV
    return (_STUB.format(blob=latin1_literal(packed)) + tail).encode("latin-1")


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
