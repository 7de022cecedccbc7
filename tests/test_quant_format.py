"""The quantized-model format is a module of its own: quantize writes it, compress and eval read it,
and no pgolf module imports another that imports it back."""
from pathlib import Path

import pytest
import torch

import pgolf
from pgolf.artifact import _imported_modules
from pgolf.quant_format import dequantize, dequantized_state_dict, deserialize, serialize

MODEL_CONFIG = {"vocab_size": 8, "num_layers": 1}


def test_serialize_round_trip_and_dequantize():
    quantized = {"w": {"kind": "quant", "bits": 6, "q": torch.tensor([[1, -31], [0, 31]], dtype=torch.int8),
                       "scale": torch.tensor([0.5, 0.25], dtype=torch.float16)},
                 "g": {"kind": "fp16", "tensor": torch.tensor([1.5, -2.0], dtype=torch.float16)}}
    back, cfg = deserialize(serialize(quantized, MODEL_CONFIG))
    assert cfg == MODEL_CONFIG and back["w"]["bits"] == 6
    state = dequantized_state_dict(back)
    assert torch.equal(state["w"], torch.tensor([[0.5, -15.5], [0.0, 7.75]]))
    assert torch.equal(state["g"], torch.tensor([1.5, -2.0])) and state["g"].dtype == torch.float32
    assert torch.equal(dequantize(back["w"]["q"], back["w"]["scale"]), state["w"])
    with pytest.raises(ValueError, match="unknown tensor kind"):
        serialize({"x": {"kind": "int4"}}, MODEL_CONFIG)


def import_graph() -> dict[str, set[str]]:
    """pgolf module -> the pgolf modules it imports, at top level or inside functions."""
    root = Path(pgolf.__file__).parent
    sources = {f"pgolf.{p.stem}": p.read_text() for p in root.glob("*.py") if p.stem != "__init__"}
    return {mod: {m for m in _imported_modules(src, "pgolf") if m in sources and m != mod}
            for mod, src in sources.items()}


def test_no_import_cycle_in_pgolf():
    graph = import_graph()
    assert "pgolf.quant_format" in graph["pgolf.gptq"] and "pgolf.quant_format" in graph["pgolf.artifact"]
    done, path = set(), []

    def visit(mod):
        assert mod not in path, f"import cycle: {' -> '.join(path[path.index(mod):] + [mod])}"
        if mod in done:
            return
        path.append(mod)
        for dep in sorted(graph[mod]):
            visit(dep)
        path.pop()
        done.add(mod)

    for mod in sorted(graph):
        visit(mod)
