"""The artifact is what gets scored: it must round-trip bit-exactly, fail loudly when damaged,
and report sizes measured from the files on disk."""
import ast
import json
import lzma
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from pgolf import artifact
from pgolf.artifact import (compress, compress_artifact, decompress, latin1_literal, load_model_from_artifact, minify,
                            module_sources, pack_code)
from pgolf.gptq import quantize_state_dict
from pgolf.quant_format import dequantized_state_dict, deserialize, serialize
from pgolf.model import build_model

MODEL_CONFIG = {"vocab_size": 64, "num_layers": 2, "model_dim": 32, "num_heads": 4, "num_kv_heads": 2,
                "mlp_mult": 2, "rope_base": 10000.0, "logit_softcap": 30.0, "seq_len": 16}
QCFG = {"method": "rtn", "bits": 6, "embed_bits": 8, "clip_sigmas": 12.85, "embed_clip_sigmas": 20.0,
        "block_size": 16, "damp": 0.01, "passthrough_max_numel": 0, "act_order": True}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = build_model(MODEL_CONFIG)
    with torch.no_grad():  # the output projections start at zero; give every matrix real values
        for p in m.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return m


@pytest.fixture(scope="module")
def quantized(model):
    return quantize_state_dict(model.state_dict(), {}, QCFG)["tensors"]


def assert_same(a: dict, b: dict):
    assert list(a) == list(b)
    for name in a:
        assert a[name]["kind"] == b[name]["kind"], name
        if a[name]["kind"] == "quant":
            assert a[name]["bits"] == b[name]["bits"]
            assert a[name]["q"].dtype == b[name]["q"].dtype == torch.int8
            assert torch.equal(a[name]["q"], b[name]["q"]) and torch.equal(a[name]["scale"], b[name]["scale"])
        else:
            assert b[name]["tensor"].dtype == torch.float16 and torch.equal(a[name]["tensor"], b[name]["tensor"])


@pytest.mark.parametrize("codec", ["brotli", "lzma", "zstd"])
def test_round_trip_is_bit_exact(quantized, codec):
    data = serialize(quantized, MODEL_CONFIG)
    blob = compress(data, codec, None)
    assert len(blob) < len(data)
    assert decompress(blob) == data
    back, cfg = deserialize(decompress(blob))
    assert cfg == MODEL_CONFIG
    assert_same(quantized, back)
    assert serialize(back, cfg) == data  # deterministic: same tensors, same bytes


def test_damaged_blobs_fail_clearly(quantized):
    data = serialize(quantized, MODEL_CONFIG)
    for codec in artifact.CODECS:
        blob = compress(data, codec, None)
        with pytest.raises(ValueError, match=f"{codec} blob is corrupt or truncated|payload"):
            deserialize(decompress(blob[: len(blob) // 2]))
    with pytest.raises(ValueError, match="unknown codec tag"):
        decompress(b"GZIP" + data)
    with pytest.raises(ValueError, match="payload is"):
        deserialize(data[:-10])
    with pytest.raises(ValueError, match="CRC32"):
        flipped = bytearray(data)
        flipped[-100] ^= 0x55
        deserialize(bytes(flipped))
    with pytest.raises(ValueError, match="magic"):
        deserialize(b"NOTPGOLF" + data[8:])
    with pytest.raises(ValueError, match="truncated"):
        deserialize(data[:5])
    with pytest.raises(ValueError, match="out of range for lzma"):
        compress(data, "lzma", 11)


def test_artifact_json_matches_files_and_fits_flips(quantized, tmp_path, monkeypatch):
    quant_bin = tmp_path / "quant.bin"
    quant_bin.write_bytes(serialize(quantized, MODEL_CONFIG))
    paths = [tmp_path / "model.blob", tmp_path / "code.py", tmp_path / "artifact.json"]
    s = compress_artifact(quant_bin, {"codec": "brotli", "level": 11}, *paths)
    on_disk = json.loads(paths[2].read_text())
    assert on_disk == s
    assert s["model_bytes"] == os.path.getsize(paths[0]) and s["code_bytes"] == os.path.getsize(paths[1])
    assert s["total_bytes"] == s["model_bytes"] + s["code_bytes"]
    assert s["limit_bytes"] == 16_000_000 and s["fits"] and s["level"] == 11
    assert sorted(os.listdir(tmp_path)) == ["artifact.json", "code.py", "model.blob", "quant.bin"]  # no temps
    # The limit is inclusive: exactly at it fits, one byte over does not.
    for limit, fits in [(s["total_bytes"], True), (s["total_bytes"] - 1, False)]:
        monkeypatch.setattr(artifact, "ARTIFACT_LIMIT_BYTES", limit)
        assert compress_artifact(quant_bin, {"codec": "brotli", "level": 11}, *paths)["fits"] is fits
    # A damaged quant.bin leaves no artifact behind.
    quant_bin.write_bytes(quant_bin.read_bytes()[:-1])
    out = tmp_path / "out"
    with pytest.raises(ValueError):
        compress_artifact(quant_bin, {"codec": "zstd", "level": None}, out / "b", out / "c", out / "j")
    assert not out.exists() or not any(out.iterdir())


def test_load_model_from_artifact(model, tmp_path):
    # Fine 8-bit codes, so the logits comparison below checks the wiring, not the quantizer.
    fine = {**QCFG, "bits": 8, "clip_sigmas": 4.0, "embed_clip_sigmas": 4.0}
    quantized = quantize_state_dict(model.state_dict(), {}, fine)["tensors"]
    blob = tmp_path / "model.blob"
    blob.write_bytes(compress(serialize(quantized, MODEL_CONFIG), "zstd", 3))
    loaded, cfg = load_model_from_artifact(blob)
    assert cfg == MODEL_CONFIG
    expected = dequantized_state_dict(quantized)
    for name, t in loaded.state_dict().items():
        assert t.dtype == torch.float32 and torch.equal(t, expected[name]), name
    ids = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref, got = model(ids), loaded(ids)
    assert 0 < (ref - got).abs().max() < 0.05 * ref.abs().max()  # quantized: close, not equal


def run_packed(code: bytes, tmp_path, snippet: str, *args):
    """Run `snippet` after exec'ing the packed file, in a fresh interpreter that cannot see the checkout."""
    packed = tmp_path / "code.py"
    packed.write_bytes(code)
    # compile() of the bytes honours the file's coding line, as `python code.py` does.
    prog = f"exec(compile(open({str(packed)!r}, 'rb').read(), 'code.py', 'exec'))\n" + textwrap.dedent(snippet)
    cmd = [sys.executable, "-I", "-c", prog] if snippet else [sys.executable, "-I", str(packed), *args]
    return subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120)


def test_packed_code_provides_the_real_modules(tmp_path):
    sources = module_sources()
    assert {"pgolf", "pgolf.gptq", "pgolf.artifact", "pgolf.model"} <= set(sources)
    # Through a file: inline in `python -c`, the sources outgrow one argument's limit (128 KiB on Linux).
    (tmp_path / "sources.json").write_text(json.dumps({name: minify(src) for name, src in sources.items()}))
    snippet = f"""
        import importlib, json, sys
        sources = json.loads(open({str(tmp_path / "sources.json")!r}).read())
        for name, src in sources.items():
            mod = importlib.import_module(name)
            assert mod.__spec__.origin == "packed:" + name, (name, mod.__spec__.origin)
            assert mod.__loader__.get_source(name) == src, name
        import torch
        from pgolf.gptq import quantize_rtn
        q, s = quantize_rtn(torch.ones(2, 4), 6, 3.0)
        print("ok", len(sources))
    """
    result = run_packed(pack_code(), tmp_path, snippet)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["ok", str(len(sources))]


def test_packed_code_is_the_import_closure_and_runs_as_script(tmp_path):
    # A fake package: the pack holds the entry module and what it imports (in any order), nothing else,
    # and `python code.py <module> args` runs that module as __main__.
    root = tmp_path / "src"
    (root / "pgolf").mkdir(parents=True)
    (root / "pgolf" / "__init__.py").write_text("GREETING = 'hello'\n")
    (root / "pgolf" / "a.py").write_text("from pgolf.b import twice\nVALUE = twice(21)\n")
    (root / "pgolf" / "b.py").write_text("def twice(x):\n    return 2 * x\n")
    (root / "pgolf" / "unused.py").write_text("raise RuntimeError('never packed')\n")
    (root / "pgolf" / "main.py").write_text(
        "import sys\nfrom pgolf import GREETING\n"
        "def late():\n    import pgolf.a\n    return pgolf.a.VALUE\n"
        "if __name__ == '__main__':\n    print(GREETING, late(), sys.argv[1:])\n")
    assert list(module_sources(("pgolf.main",), root)) == ["pgolf", "pgolf.a", "pgolf.b", "pgolf.main"]
    code = pack_code(("pgolf.main",), root)
    result = run_packed(code, tmp_path, "", "pgolf.main", "--x", "1")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "hello 42 ['--x', '1']"
    # A module left out of the pack must not leak in from an installed checkout.
    result = run_packed(code, tmp_path, "import pgolf.unused")
    assert result.returncode != 0 and "ModuleNotFoundError" in result.stderr


def packed_sources(code: bytes) -> dict:
    """The {module: source} payload of a packed file, read without running it."""
    blob = next(n.func.value.value for n in ast.walk(ast.parse(code))
                if isinstance(n, ast.Call) and getattr(n.func, "attr", None) == "encode")
    return json.loads(lzma.decompress(blob.encode("latin-1")))


def test_latin1_literal_holds_every_byte():
    data = bytes(range(256)) * 2 + b"\x001\\\\\"\r\n"  # NUL before a digit: no octal escape
    source = f"# coding: latin-1\nx = {latin1_literal(data)}\n".encode("latin-1")
    namespace = {}
    exec(compile(source, "t.py", "exec"), namespace)
    assert namespace["x"].encode("latin-1") == data
    assert len(latin1_literal(data)) < 1.05 * len(data)


def without_docstrings(source: str) -> str:
    tree = ast.parse(source)
    reads_doc = any(isinstance(n, ast.Name) and n.id == "__doc__" for n in ast.walk(tree))
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) \
                and ast.get_docstring(node, clean=False) is not None and not (node is tree and reads_doc):
            node.body = node.body[1:] or [ast.Pass()]
    return ast.dump(tree)


def test_packed_code_drops_comments_and_docstrings_and_nothing_else(tmp_path, monkeypatch):
    sources, code = module_sources(), pack_code()
    packed = packed_sources(code)
    assert list(packed) == list(sources)
    comment, docstring = "# Bytes a latin-1 string literal cannot hold", "Approximate polar factor U Vᵀ of a 2-D matrix"
    assert comment in sources["pgolf.artifact"] and docstring in sources["pgolf.muon"]
    assert comment not in packed["pgolf.artifact"] and docstring not in packed["pgolf.muon"]
    for name, src in sources.items():  # the same syntax tree, docstrings aside: unparse changed no code
        assert ast.dump(ast.parse(packed[name])) == without_docstrings(src), name
    snippet = """
        import pgolf.muon, pgolf.train
        assert pgolf.muon.newton_schulz.__doc__ is None and pgolf.muon.__doc__ is None
        assert pgolf.train.__doc__ is None
    """
    result = run_packed(code, tmp_path, snippet)
    assert result.returncode == 0, result.stderr
    # As a script (torch's import reads the stack, so linecache asks the loader for "__main__"'s source).
    result = run_packed(code, tmp_path, "", "pgolf.train", "--help")
    assert result.returncode == 0 and "--train-dir" in result.stdout, result.stderr
    # The point of all this: fewer code bytes. Comments and docstrings are about a third of the pack.
    monkeypatch.setattr(artifact, "minify", lambda src: src)
    raw = pack_code()
    assert packed_sources(raw) == sources
    assert len(code) < 0.8 * len(raw)


def test_minify_keeps_the_docstring_of_a_module_that_reads_its_own_doc():
    reads = '"""Usage: run me."""\nimport sys\n\ndef f():\n    """gone"""\n    return __doc__  # gone too\n'
    assert minify(reads) == '"""Usage: run me."""\nimport sys\n\ndef f():\n    return __doc__\n'
    assert minify(reads.replace("return __doc__", "return 1")).startswith("import sys")
