"""Differential check, on CPU: does pgolf compute what the 1.0856 record's script computes?

    python bench/diff_reference.py --docs DOCS.jsonl [--ref .ref] [--quick] [--only 0,1,2,3,4,5,6] [--threads 1]

The record's script (the *reference*, `.ref/train_gpt_human.py`, git-ignored) is imported at run time
from `--ref`; none of its code is copied here. Where a piece of the reference is not a top-level
function it is still *its* code that runs: `training_frac`, `lr_mul` and `step_fn` (nested in
`train_model`) are rebuilt from their code objects with their free variables supplied
(`nested_function`), the EMA statements are compiled from the reference's own source
(`reference_statement`). pgolf's side calls `pgolf.train.train_step` itself.

Inputs: real sp8192 tokens, [BOS] + encode(text) per document as the shards lay them out, from
--docs: 200 documents of the challenge's pool as JSONL with a `text` field (the measurements in
docs/records used fineweb_pg_docs_selected_sample200.jsonl; lines split on '\n' only). The first
100 documents feed forward/backward, the optimizer steps and GPTQ calibration; the other 100 are
held out (quantized-model loss, byte counting, evaluation). fp32 on CPU, torch.compile off
(TORCHDYNAMO_DISABLE=1: the reference's @torch.compile functions run eagerly), the FA3 shim
(`.ref/flash_attn_interface.py`) in SDPA mode with K/V expanded to the query heads. One thread by
default: with another process on one of the 2 cores, 2 threads ran 6x slower.

Weights: the reference GPT comes from its own `Hyperparameters` (environment defaults, world size
1), perturbed off its initialisation (zero-initialised projections would make most gradients zero
and the checks vacuous), and is copied into pgolf's GPT (built from config/challenge.yaml's
`train:`) through the explicit `NAME_MAP`: an unmapped, doubly mapped or mis-shaped tensor stops
the script.

Checks (each line: max abs difference, relative = max abs / max |reference|, the tolerance,
PASS/FAIL; exit status 1 on any FAIL):
  0. hyperparameters: 52 values of the reference's `Hyperparameters` vs challenge.yaml.
  1. forward: logits and loss of the full model, looping off and on (`looping_active` vs
     pgolf's `model.looping`).
  2. backward: the gradient of each of the 113 parameters (mapped).
  3. optimizer, on a width-128 model (2 query / 1 KV head of 64, 11 layers, vocab 8192: bf16
     Newton-Schulz costs seconds per full-size matrix on this CPU; the shapes keep all kinds:
     square, wide, tall with the sqrt(4) factor): 3 steps of the reference's `step_fn` vs pgolf's
     loop body (`lr_scale`, `muon_momentum`, `set_schedules`, `train_step`) at steps 700-702 and
     60% of the 588 s budget (momentum warm-up and LR warmdown both active; 2 micro-batches; the
     0.3 clip active). pgolf's own forward/backward/accumulation run and are compared (loss, norm);
     then, at the clip, its gradients are replaced by the reference's, and its Muon gets the
     reference's Newton-Schulz plugged in (`Muon._ns`), so every other term (momentum, Nesterov,
     row normalisation, aspect factor, weight decay, LR, AdamW groups, clip) must agree exactly.
     Separately: pgolf's `newton_schulz` vs the reference's on the same bf16 input (bitwise), the
     optimizer groups' members and hyperparameters, and the LR multiplier, loop switch and
     momentum as functions of time and step.
  4. EMA: the reference's own EMA statements vs `pgolf.optim.EMA` on the same 4 weight states.
  5. GPTQ: Hessians collected by each side from the same tokens (looping on, as the record), then
     each side quantizes with its own Hessians and pgolf also with the reference's: identical
     codes and fp16 scales per matrix, GPTQ's objective tr(E H E^T)/tr(W H W^T), and the held-out
     loss of each dequantized model. All 67 matrices; --quick: block 4 and the embedding.
  6. eval: the reference's byte LUTs vs pgolf's; the bytes of the held-out stream (reference
     `eval_val` driven by a constant-loss model, pgolf's `evaluate_tokens`, the decoded text);
     `eval_val_sliding` (stride 64, 256-token windows) and `eval_val` vs pgolf's
     `evaluate_tokens` on the same model: val_loss, val_bpb.

Differences by design (NOTE lines, not failures):
  * RoPE orientation: pgolf rotates the rotary half-pairs by +theta, the reference by -theta. Same
    function after negating, in W_q and W_k, the rows of the second half of each head's rotary
    dims (q.k is unchanged; RMS-norm, Muon's row norm and Newton-Schulz commute with row sign
    flips; the orthogonal init is sign-symmetric), so the name map applies that flip. A NOTE shows
    the logits without it.
  * RMSNorm epsilon: pgolf's block and final norms use 1e-6, the reference eps=None (1.19e-7, the
    fp32 epsilon, also for bf16 inputs): a relative effect below 1e-6 at unit RMS.
  * Numerics: the record runs bf16 autocast on the GPU, this check fp32. pgolf's Muon stacks
    same-shape matrices: on the GPU in bf16 (tall ones as contiguous transposes, the reference
    as transposed views), on CPU in fp32; Newton-Schulz's quintic amplifies rounding, so both
    paths differ from the reference by a few % of an update element (NOTE lines), and the tall
    matrices in the exact check keep that layout difference (tolerance: 10x the reference's own
    sensitivity to it). The total gradient norm sums per-tensor norms in parameter order, and
    pgolf registers resid_mix and q_gain first: the clip factor then rounds differently by an
    ulp; the check hands the clip pgolf's parameters in the reference's order.
  * EMA: mul_+add_ (reference) vs lerp_ (pgolf), a few fp32 ulp.
  * Data: pgolf reads train shards in order, the reference samples sequences from shuffled shards
    (seeded by rank), so the two never see the same batches; calibration is 8 batches per rank
    summed over 8 ranks (64) in pgolf vs 64 per rank (rank 0's kept) in the reference. Here both
    get the same tokens.
  * LR progress: pgolf uses max(step/max_steps, elapsed/(budget - reserve)) with the reserve known
    from the first clock sync (step 1), the reference elapsed/(budget - reserve); with 20000 max
    steps and ~5000 run they agree (checked at the record's pace).
  * Sliding eval: the reference shortens its last windows, pgolf pulls its last window back to end
    at the last target; both score every target once. The check uses a token count for which the
    two window plans coincide.
"""
from __future__ import annotations

import argparse
import ast
import contextlib
import copy
import inspect
import io
import json
import math
import os
import re
import sys
import textwrap
import time
import types
from pathlib import Path
from types import SimpleNamespace

# Before torch is imported: eager execution of the reference's @torch.compile functions, and the
# FA3 shim without its GPU probe. World size 1: the reference reads RANK/WORLD_SIZE at import.
os.environ["TORCHDYNAMO_DISABLE"] = "1"
os.environ["REF_SDPA_GQA"] = "expand"
os.environ.setdefault("TQDM_DISABLE", "1")
for _var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
    os.environ.pop(_var, None)

import numpy as np  # noqa: E402
import sentencepiece as spm  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

from pgolf import hessians as pg_hessians  # noqa: E402
from pgolf import optim as pg_optim  # noqa: E402
from pgolf import train as pg_train  # noqa: E402
from pgolf.bpb import byte_luts, target_bytes  # noqa: E402
from pgolf.config import load_config  # noqa: E402
from pgolf.evaluate import evaluate_tokens  # noqa: E402
from pgolf.gptq import output_error_ratio, quantize_state_dict  # noqa: E402
from pgolf.model import GPT as PgGPT  # noqa: E402
from pgolf.model import ModelConfig  # noqa: E402
from pgolf.muon import newton_schulz  # noqa: E402
from pgolf.quant_format import dequantize, dequantized_state_dict  # noqa: E402

CONFIG = REPO / "config" / "challenge.yaml"
BOS_ID = 1
SEED = 1337

# Reference parameter name -> pgolf parameter name. Every tensor must match exactly one row.
NAME_MAP = [
    (r"tok_emb\.weight", r"tok_emb.weight"),
    (r"skip_weights", r"skip_weights"),
    (r"skip_gates", r"skip_gates"),
    (r"blocks\.(\d+)\.attn_scale", r"blocks.\1.attn_scale"),
    (r"blocks\.(\d+)\.mlp_scale", r"blocks.\1.mlp_scale"),
    (r"blocks\.(\d+)\.resid_mix", r"blocks.\1.resid_mix"),
    (r"blocks\.(\d+)\.attn\.q_gain", r"blocks.\1.attn.q_gain"),
    (r"blocks\.(\d+)\.attn\.c_q\.weight", r"blocks.\1.attn.q.weight"),  # + RoPE row sign flip
    (r"blocks\.(\d+)\.attn\.c_k\.weight", r"blocks.\1.attn.k.weight"),  # + RoPE row sign flip
    (r"blocks\.(\d+)\.attn\.c_v\.weight", r"blocks.\1.attn.v.weight"),
    (r"blocks\.(\d+)\.attn\.proj\.weight", r"blocks.\1.attn.proj.weight"),
    (r"blocks\.(\d+)\.mlp\.fc\.weight", r"blocks.\1.mlp.fc.weight"),
    (r"blocks\.(\d+)\.mlp\.proj\.weight", r"blocks.\1.mlp.proj.weight"),
]
ROPE_FLIPPED = re.compile(r"blocks\.\d+\.attn\.c_[qk]\.weight")


# -----------------------------------------------------------------------------------------------
# Reporting


class Report:
    """One line per comparison; remembers failures for the exit status."""

    def __init__(self):
        self.failures: list[str] = []
        self.t0 = time.perf_counter()

    def section(self, title: str) -> None:
        print(f"\n== {title}  [t={time.perf_counter() - self.t0:.0f}s]", flush=True)

    def compare(self, name: str, got, want, tol: float, what: str = "rel") -> bool:
        """got (pgolf) vs want (reference); passes when the `what` metric ('rel' or 'abs') <= tol."""
        got, want = torch.as_tensor(got).double(), torch.as_tensor(want).double()
        if got.shape != want.shape:
            return self.verdict(name, False, f"shape {tuple(got.shape)} vs {tuple(want.shape)}")
        max_abs = float((got - want).abs().max()) if got.numel() else 0.0
        rel = max_abs / max(float(want.abs().max()) if want.numel() else 0.0, 1e-30)
        metric = rel if what == "rel" else max_abs
        return self.verdict(name, metric <= tol, f"max_abs {max_abs:.3e}  rel {rel:.3e}  (tol {what} {tol:.0e})")

    def verdict(self, name: str, ok: bool, detail: str) -> bool:
        print(f"{'PASS' if ok else 'FAIL'}  {name:<52} {detail}", flush=True)
        if not ok:
            self.failures.append(name)
        return ok

    def note(self, name: str, detail: str) -> None:
        print(f"NOTE  {name:<52} {detail}", flush=True)


def max_diff(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """(max |a-b|, max |a-b| / max |b|)."""
    d = float((a.double() - b.double()).abs().max())
    return d, d / max(float(b.double().abs().max()), 1e-30)


@contextlib.contextmanager
def threads(n: int):
    """torch.cholesky_inverse of a 2048x2048 matrix takes 24 s with 2 threads here, 0.3 s with 1."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# -----------------------------------------------------------------------------------------------
# Running the reference's own code


def import_reference(ref_dir: Path, module: str):
    """Import the record's script from ref_dir, its Hyperparameters reading DATA_DIR=ref_dir/data."""
    os.environ["DATA_DIR"] = str(ref_dir / "data")
    sys.path.insert(0, str(ref_dir))
    with contextlib.redirect_stderr(io.StringIO()):  # the shim announces itself
        return __import__(module)


def nested_function(outer, name: str, **free):
    """Function `name` defined inside `outer`, rebuilt from its code object with `free` as its closure."""
    codes = [c for c in outer.__code__.co_consts if isinstance(c, types.CodeType) and c.co_name == name]
    if len(codes) != 1:
        raise LookupError(f"{outer.__qualname__}: expected one nested function {name!r}, found {len(codes)}")
    code = codes[0]
    if set(code.co_freevars) != set(free):
        raise LookupError(f"{outer.__qualname__}.{name} needs free variables {sorted(code.co_freevars)}, "
                          f"got {sorted(free)}")
    closure = tuple(types.CellType(free[v]) for v in code.co_freevars)
    return types.FunctionType(code, outer.__globals__, name, None, closure)


def reference_statement(fn, node_type, marker: str):
    """The shortest statement of type `node_type` in fn's source containing `marker`, compiled."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))
    hits = [n for n in ast.walk(tree) if isinstance(n, node_type) and marker in ast.unparse(n)]
    if not hits:
        raise LookupError(f"{fn.__name__}: no {node_type.__name__} statement containing {marker!r}")
    node = min(hits, key=lambda n: len(ast.unparse(n)))
    return compile(ast.Module(body=[node], type_ignores=[]), f"<reference {fn.__name__}: {marker}>", "exec")


# -----------------------------------------------------------------------------------------------
# Tokens, models, the name map


def load_streams(sp, docs_jsonl: Path) -> tuple[np.ndarray, np.ndarray, list[list[int]]]:
    """(train stream, held-out stream, held-out docs' ids): first / second half of the documents."""
    lines = docs_jsonl.read_text(encoding="utf-8").split("\n")
    texts = [json.loads(line)["text"] for line in lines if line.strip()]
    docs = sp.encode(texts, out_type=int)
    half = len(docs) // 2
    return as_stream(docs[:half]), as_stream(docs[half:]), docs[half:]


def as_stream(docs: list[list[int]]) -> np.ndarray:
    return np.asarray([t for d in docs for t in [BOS_ID] + d], dtype=np.int64)


def batches(stream: np.ndarray, num: int, seqs: int, seq_len: int, start: int = 0):
    """`num` (x, y) batches of `seqs` consecutive sequences from `stream`."""
    out, pos = [], start
    for _ in range(num):
        n = seqs * seq_len
        chunk = torch.from_numpy(stream[pos:pos + n + 1])
        out.append((chunk[:-1].reshape(seqs, seq_len), chunk[1:].reshape(seqs, seq_len)))
        pos += n
    return out


def load_train_cfg() -> tuple[dict, dict, dict]:
    cfg = load_config(CONFIG)  # the schema's defaults filled in, as the workflow sees it
    return cfg["train"], cfg["quant"], cfg["eval"]


def perturb_reference(model, seed: int) -> None:
    """Move every tensor off its init, deterministically: projections get weights, gains spread."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if p.ndim == 2 and "blocks" in name:
                p.add_(noise / math.sqrt(p.shape[1]) * (1.0 if name.endswith("proj.weight") else 0.3))
            elif name == "tok_emb.weight":
                p.add_(0.02 * noise)
            elif "q_gain" in name:
                p.add_(0.5 * noise)
            else:  # scales, resid_mix, skip weights and gates
                p.add_(0.2 * noise)


class NameMap:
    """Reference <-> pgolf parameter names (NAME_MAP) and the RoPE row sign flip of W_q and W_k."""

    def __init__(self, ref_model, pg_model, head_dim: int, rope_dims: int):
        ref_shapes = {n: tuple(p.shape) for n, p in ref_model.named_parameters()}
        pg_shapes = {n: tuple(p.shape) for n, p in pg_model.named_parameters()}
        self.to_pg_name: dict[str, str] = {}
        for name, shape in ref_shapes.items():
            hits = [re.sub(pat, repl, name) for pat, repl in NAME_MAP if re.fullmatch(pat, name)]
            if len(hits) != 1:
                raise KeyError(f"reference tensor {name}: {len(hits)} NAME_MAP rows match (need exactly 1)")
            target = hits[0]
            if target not in pg_shapes:
                raise KeyError(f"reference tensor {name} maps to {target}, which pgolf's GPT does not have")
            if pg_shapes[target] != shape:
                raise ValueError(f"{name} {shape} -> {target} {pg_shapes[target]}: shapes differ")
            self.to_pg_name[name] = target
        unmapped = sorted(set(pg_shapes) - set(self.to_pg_name.values()))
        if unmapped or len(set(self.to_pg_name.values())) != len(self.to_pg_name):
            raise KeyError(f"pgolf tensors not covered exactly once by the map: {unmapped}")
        self.to_ref_name = {v: k for k, v in self.to_pg_name.items()}
        self.head_dim, self.rope_dims = head_dim, rope_dims

    def row_signs(self, rows: int) -> torch.Tensor:
        pos = torch.arange(rows) % self.head_dim
        return torch.where((pos >= self.rope_dims // 2) & (pos < self.rope_dims), -1, 1)

    def to_pg(self, ref_name: str, t: torch.Tensor, flip: bool = True) -> torch.Tensor:
        """A reference tensor (weight, gradient, int code, update) in pgolf's convention."""
        if flip and ROPE_FLIPPED.fullmatch(ref_name):
            return t * self.row_signs(t.shape[0]).to(t.dtype)[:, None]
        return t

    def copy_weights(self, ref_model, pg_model, flip: bool = True) -> None:
        pg_params = dict(pg_model.named_parameters())
        with torch.no_grad():
            for name, p in ref_model.named_parameters():
                target = pg_params[self.to_pg_name[name]]
                target.copy_(self.to_pg(name, p.detach(), flip).to(target.dtype))


def build_pair(ref, h, train_cfg: dict, vocab: int):
    """Reference GPT (own Hyperparameters, perturbed), pgolf GPT with the same weights, and the map."""
    torch.manual_seed(SEED)
    R = ref.GPT(h)
    perturb_reference(R, SEED)
    P = PgGPT(ModelConfig.from_train_cfg(train_cfg, vocab))
    names = NameMap(R, P, h.model_dim // h.num_heads, h.rope_dims)
    names.copy_weights(R, P)
    return R, P, names


def set_looping(R, P, on: bool) -> None:
    R.looping_active = on
    P.looping = on


# -----------------------------------------------------------------------------------------------
# 0. Hyperparameters


def check_hyperparameters(rep: Report, ctx) -> None:
    rep.section("0. hyperparameters: reference Hyperparameters (env defaults, world 1) vs config/challenge.yaml")
    h, t, q, e = ctx.h, ctx.train_cfg, ctx.quant_cfg, ctx.eval_cfg
    loop = t["loop_layers"]
    pairs = [
        ("vocab_size", h.vocab_size, ctx.vocab), ("num_layers", h.num_layers, t["num_layers"]),
        ("model_dim", h.model_dim, t["model_dim"]), ("embedding_dim", h.embedding_dim, t["model_dim"]),
        ("num_heads", h.num_heads, t["num_heads"]), ("num_kv_heads", h.num_kv_heads, t["num_kv_heads"]),
        ("mlp_mult", h.mlp_mult, t["mlp_mult"]), ("rope_base", h.rope_base, t["rope_base"]),
        ("rope_dims", h.rope_dims, t["rope_dims"]), ("qk_gain_init", h.qk_gain_init, t["qk_gain_init"]),
        ("logit_softcap", h.logit_softcap, t["logit_softcap"]), ("ln_scale", h.ln_scale, t["layer_norm_scale"]),
        ("xsa_last_n == num_layers", h.xsa_last_n == h.num_layers, t["xsa"]),
        ("skip_gates_enabled", h.skip_gates_enabled, t["unet_skips"]),
        ("tie_embeddings", h.tie_embeddings, True),
        ("tied_embed_init_std", h.tied_embed_init_std, t["embed_init_std"]),
        ("loop segment", list(range(h.loop_start, h.loop_end + 1)), loop),
        ("num_loops + 1", h.num_loops + 1, t["loop_repeats"]),
        ("enable_looping_at", h.enable_looping_at, t["loop_start_frac"]),
        ("train_seq_len", h.train_seq_len, t["seq_len"]), ("train_batch_tokens", h.train_batch_tokens, t["batch_tokens"]),
        ("iterations", h.iterations, t["max_steps"]),
        ("max_wallclock_seconds", h.max_wallclock_seconds, t["max_wallclock_seconds"]),
        ("gptq_reserve_seconds", h.gptq_reserve_seconds, t["gptq_reserve_seconds"]),
        ("warmdown_frac", h.warmdown_frac, t["warmdown_frac"]), ("LR warm-up steps (none)", 0, t["warmup_steps"]),
        ("compile warmup_steps", h.warmup_steps, t["compile_warmup_steps"]), ("min_lr", h.min_lr, 0.0),
        ("matrix_lr", h.matrix_lr, t["matrix_lr"]), ("tied_embed_lr", h.tied_embed_lr, t["embed_lr"]),
        ("scalar_lr", h.scalar_lr, t["scalar_lr"]), ("muon_momentum", h.muon_momentum, t["muon_momentum"]),
        ("muon_momentum_warmup_start", h.muon_momentum_warmup_start, t["muon_momentum_warmup_start"]),
        ("muon_momentum_warmup_steps", h.muon_momentum_warmup_steps, t["muon_momentum_warmup_steps"]),
        ("muon_backend_steps", h.muon_backend_steps, t["muon_ns_steps"]),
        ("muon_row_normalize", h.muon_row_normalize, t["muon_row_norm"]),
        ("beta1, beta2", (h.beta1, h.beta2), pg_optim.ADAM_BETAS),
        ("grad_clip_norm", h.grad_clip_norm, t["grad_clip_norm"]), ("muon_wd", h.muon_wd, t["weight_decay"]),
        ("embed_wd", h.embed_wd, t["embed_weight_decay"]), ("adam_wd", h.adam_wd, t["scalar_weight_decay"]),
        ("ema_decay", h.ema_decay, t["ema_decay"]), ("bf16 tied embedding", True, t["embed_bf16"]),
        ("matrix_bits", h.matrix_bits, q["bits"]), ("embed_bits", h.embed_bits, q["embed_bits"]),
        ("matrix_clip_sigmas", h.matrix_clip_sigmas, q["clip_sigmas"]),
        ("embed_clip_sigmas", h.embed_clip_sigmas, q["embed_clip_sigmas"]),
        ("gptq block 128 / damp 0.01 / act-order", (128, 0.01, True), (q["block_size"], q["damp"], q["act_order"])),
        ("passthrough numel <= 65536", 65536, q["passthrough_max_numel"]),
        ("eval_seq_len", h.eval_seq_len, e["seq_len"]), ("eval_stride", h.eval_stride, e["stride"]),
        ("sliding batch_seqs", 32, e["batch_seqs"]),
    ]
    bad = [f"{n}: ref {a!r} vs pgolf {b!r}" for n, a, b in pairs if a != b and not (
        isinstance(a, (int, float)) and isinstance(b, (int, float)) and math.isclose(a, b))]
    rep.verdict(f"hyperparameters ({len(pairs)} values)", not bad, "; ".join(bad) or "all equal")
    rep.note("calibration batches", f"ref {h.gptq_calibration_batches} per rank (rank 0's kept); pgolf "
             f"{t['hessian_batches']} per rank x {t['nproc']} ranks summed = {t['hessian_batches'] * t['nproc']}")
    rep.note("unused reference knobs", f"embed_lr {h.embed_lr}, head_lr {h.head_lr} (untied only), "
             f"muon_beta2 {h.muon_beta2}, rope_train_seq_len {h.rope_train_seq_len}")


# -----------------------------------------------------------------------------------------------
# 1-2. Forward and backward


def forward_backward(ctx, looping: bool) -> dict:
    """Logits (no grad), then loss and every gradient, on both sides; cached per looping flag."""
    if looping in ctx.fb_cache:
        return ctx.fb_cache[looping]
    R, P = ctx.R, ctx.P
    set_looping(R, P, looping)
    x, y = ctx.fb_batch
    with torch.no_grad():
        logits_r, logits_p = R.forward_logits(x), P(x)
    R.zero_grad(set_to_none=True)
    P.zero_grad(set_to_none=True)
    loss_r, loss_p = R(x, y), P(x, y)
    loss_r.backward()
    loss_p.backward()
    ref_params, pg_params = dict(R.named_parameters()), dict(P.named_parameters())
    grads = {pn: (pg_params[pn].grad.clone(), ctx.names.to_pg(rn, ref_params[rn].grad.clone()))
             for rn, pn in ctx.names.to_pg_name.items()}
    out = dict(logits=(logits_p, logits_r), loss=(loss_p.detach(), loss_r.detach()), grads=grads)
    ctx.fb_cache[looping] = out
    return out


def check_forward(rep: Report, ctx) -> None:
    x, _ = ctx.fb_batch
    rep.section(f"1. forward: full model, {x.shape[0]} x {x.shape[1]} real tokens, fp32")
    for looping in (False, True):
        out = forward_backward(ctx, looping)
        tag = f"looping={'on ' if looping else 'off'}"
        rep.compare(f"forward/logits {tag}", *out["logits"], tol=1e-5)
        rep.compare(f"forward/loss {tag} ({float(out['loss'][1]):.5f} nats)", *out["loss"], tol=1e-6)
    # The RoPE orientation: copy without the row sign flip and look at the logits.
    plain = copy.deepcopy(ctx.P)
    ctx.names.copy_weights(ctx.R, plain, flip=False)
    set_looping(ctx.R, plain, False)
    with torch.no_grad():
        d, r = max_diff(plain(x), ctx.R.forward_logits(x))
    rep.note("RoPE orientation (copy w/o q/k row flip)", f"logits max_abs {d:.3e} rel {r:.3e}: pgolf rotates "
             "by +theta, the reference by -theta; equivalent up to that flip")
    rep.note("RMSNorm eps", "pgolf blocks/final norm eps=1e-6, reference eps=None (1.19e-7): inside the fp32 tolerance")


def check_backward(rep: Report, ctx) -> None:
    rep.section("2. backward: gradient of every parameter (mapped, incl. the RoPE flip)")
    for looping in (False, True):
        grads = forward_backward(ctx, looping)["grads"]
        worst_name, worst = None, (0.0, 0.0)
        for name, (g_p, g_r) in grads.items():
            d = max_diff(g_p, g_r)
            if d[1] >= worst[1]:
                worst_name, worst = name, d
        zero = [n for n, (_, g_r) in grads.items() if float(g_r.abs().max()) == 0]
        rep.verdict(f"backward/{len(grads)} grads looping={'on ' if looping else 'off'}", worst[1] <= 1e-4,
                    f"worst {worst_name}: max_abs {worst[0]:.3e} rel {worst[1]:.3e}  (tol rel 1e-04); "
                    f"all-zero grads: {len(zero)}")


# -----------------------------------------------------------------------------------------------
# 3. Optimizer steps and schedules


class FixedLoader:
    """Hands out prepared batches: the reference asks per micro-batch, pgolf per step."""

    def __init__(self, items):
        self.items = list(items)

    def next_batch(self, *_args):
        return self.items.pop(0)


class ClipProbe:
    """Wraps torch.nn.utils.clip_grad_norm_, which both training steps call after the backward passes.

    Records each call's pre-clip total norm; in 'record' mode also the model's gradients (by pgolf
    name), in 'replace' mode overwrites the model's gradients with recorded ones first. So pgolf's
    clip and optimizers get exactly the reference's gradients, while its forward/backward and
    micro-batch accumulation still run (their loss and gradient norm are compared before replacing).
    `order` (names) hands the parameters to the clip in the reference's order: the total norm sums
    per-tensor norms, and a different summation order changes the clip factor by an ulp."""

    def __init__(self, named_params, mode: str, grads: list | None = None, rename=lambda n: n,
                 order: list | None = None):
        self.named_params, self.mode, self.rename, self.order = named_params, mode, rename, order
        self.grads = grads if grads is not None else []
        self.norms: list[float] = []

    def __enter__(self):
        self.original = torch.nn.utils.clip_grad_norm_
        torch.nn.utils.clip_grad_norm_ = self.clip
        return self

    def __exit__(self, *exc):
        torch.nn.utils.clip_grad_norm_ = self.original

    def clip(self, parameters, *args, **kwargs):
        parameters = list(parameters)
        own = list(self.named_params())
        self.norms.append(float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in parameters]))))
        if self.mode == "record":
            self.grads.append({self.rename(n): p.grad.detach().clone() for n, p in own})
        elif self.mode == "replace":
            recorded = self.grads[len(self.norms) - 1]
            for n, p in own:
                p.grad.copy_(recorded[n])
        if self.order is not None:
            by_name = dict(own)
            if {id(p) for p in parameters} != {id(p) for p in by_name.values()}:
                raise AssertionError("clip_grad_norm_ got a different parameter set than the model's")
            parameters = [by_name[n] for n in self.order]
        return self.original(parameters, *args, **kwargs)


def reference_ns_per_matrix(ref):
    """For pgolf's Muon._ns: the reference's own zeropower_via_newtonschulz5, matrix by matrix."""
    def ns(stack: torch.Tensor, steps: int) -> torch.Tensor:
        return torch.stack([ref.zeropower_via_newtonschulz5(m, steps=steps) for m in stack])
    return ns


def bf16_newton_schulz(x: torch.Tensor, steps: int) -> torch.Tensor:
    """pgolf's GPU path on CPU: its stacked Newton-Schulz on bf16 input."""
    return newton_schulz(x.to(torch.bfloat16), steps)


SMALL = dict(model_dim=128, num_heads=2, num_kv_heads=1)  # heads of 64, GQA group 2, as the record


def small_pair(ctx):
    """Reference and pgolf GPT at width 128 (2 query / 1 KV head of 64), the rest as the record."""
    h = copy.copy(ctx.h)
    for key, value in dict(SMALL, embedding_dim=SMALL["model_dim"]).items():
        setattr(h, key, value)
    cfg = dict(ctx.train_cfg, **SMALL, compile=False)
    R, P, names = build_pair(ctx.ref, h, cfg, ctx.vocab)
    return h, cfg, R, P, names


def reference_schedules(ctx, h):
    """The reference's training_frac and lr_mul (nested in train_model), with the record's budget."""
    max_wallclock_ms = 1000.0 * (h.max_wallclock_seconds - h.gptq_reserve_seconds)
    training_frac = nested_function(ctx.ref.train_model, "training_frac", h=h, max_wallclock_ms=max_wallclock_ms)
    lr_mul = nested_function(ctx.ref.train_model, "lr_mul", h=h)
    return training_frac, lr_mul


def pgolf_progress(cfg: dict, step: int, elapsed_ms: float) -> float:
    """pgolf.train's progress once the GPTQ reserve is known (from the first clock sync on)."""
    budget = cfg["max_wallclock_seconds"] - cfg["gptq_reserve_seconds"]
    return max(step / cfg["max_steps"], elapsed_ms / 1000.0 / budget)


def run_reference_steps(ctx, h, R, names, steps, micro):
    """The reference's step_fn at each (step, elapsed_ms), LR from its own schedule functions."""
    optimizers = ctx.ref.Optimizers(h, R)
    training_frac, lr_mul = reference_schedules(ctx, h)
    h.grad_accum_steps = len(micro[0])
    step_fn = nested_function(ctx.ref.train_model, "step_fn", base_model=R, device=torch.device("cpu"), h=h,
                              model=R, optimizers=optimizers,
                              train_loader=FixedLoader([mb for batch in micro for mb in batch]))
    log = []
    probe = ClipProbe(R.named_parameters, "record", rename=lambda n: names.to_pg_name[n])
    with probe:
        for step, elapsed_ms in steps:
            scale = lr_mul(training_frac(step, elapsed_ms))
            loss = step_fn(step, scale)
            log.append(dict(scale=scale, momentum=optimizers.optimizer_muon.param_groups[0]["momentum"],
                            loss=float(loss), norm=probe.norms[-1]))
    # pgolf's convention for the recorded gradients (RoPE row flip of W_q, W_k)
    grads = [{pn: names.to_pg(names.to_ref_name[pn], g) for pn, g in step.items()} for step in probe.grads]
    return optimizers, log, grads


def run_pgolf_steps(cfg, P, steps, micro, ref_grads, clip_order, ns=None, fused=True, snapshots=None):
    """pgolf.train's loop body: progress -> lr_scale, muon_momentum -> set_schedules -> train_step,
    with the reference's gradients swapped in at the clip (ClipProbe). fused: the AdamW pgolf builds
    on CUDA; ns: a replacement for Muon's Newton-Schulz (None: pgolf's own, fp32 on CPU)."""
    optimizers = pg_optim.build_optimizers(P, cfg, torch.device("cuda" if fused else "cpu"))
    for opt in optimizers:
        if isinstance(opt, pg_optim.Muon) and ns is not None:
            opt._ns = ns
    full = [(torch.cat([x for x, _ in b]), torch.cat([y for _, y in b])) for b in micro]
    trainer = pg_train.Trainer(model=P, ddp=P, forward=P, optimizers=optimizers, device=torch.device("cpu"),
                               accum_steps=len(micro[0]), grad_clip_norm=cfg["grad_clip_norm"])
    loader, log = FixedLoader(full), []
    probe = ClipProbe(P.named_parameters, "replace", grads=ref_grads, order=clip_order)
    with probe:
        for step, elapsed_ms in steps:
            scale = pg_optim.lr_scale(step, pgolf_progress(cfg, step, elapsed_ms), cfg["warmup_steps"],
                                      cfg["warmdown_frac"])
            momentum = pg_optim.muon_momentum(step, cfg)
            pg_optim.set_schedules(optimizers, scale, momentum)
            loss = pg_train.train_step(trainer, loader)
            log.append(dict(scale=scale, momentum=momentum, loss=float(loss), norm=probe.norms[-1]))
            if snapshots is not None:
                snapshots.append({k: v.detach().clone() for k, v in P.state_dict().items()})
    return optimizers, log


GROUPS = ("tok_emb (AdamW)", "scalars (AdamW)", "square/wide matrices (Muon)", "tall matrices (Muon)")


def group_of(ref_name: str, tensor: torch.Tensor) -> str:
    if ref_name == "tok_emb.weight":
        return GROUPS[0]
    if ref_name.startswith("blocks") and tensor.ndim == 2 and "resid_mix" not in ref_name:
        return GROUPS[3] if tensor.shape[0] > tensor.shape[1] else GROUPS[2]
    return GROUPS[1]


def group_deltas(names, R0, R1, P0, P1) -> dict:
    """Weight change per optimizer group: {group: (pgolf delta, reference delta mapped)}."""
    parts = {g: ([], []) for g in GROUPS}
    for rn, pn in names.to_pg_name.items():
        mine, theirs = parts[group_of(rn, R0[rn])]
        mine.append((P1[pn] - P0[pn]).flatten())
        theirs.append(names.to_pg(rn, R1[rn] - R0[rn]).flatten())
    return {g: (torch.cat(a), torch.cat(b)) for g, (a, b) in parts.items()}


def l2_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


def check_optimizer(rep: Report, ctx) -> None:
    rep.section("3. optimizer: 3 steps, reference step_fn vs pgolf train_step (width-128 model, looping on)")
    h, cfg, R, P, names = small_pair(ctx)
    seq = ctx.opt_seq_len
    micro = [batches(ctx.train_stream, 2, 1, seq, start=ctx.opt_offset + 2 * seq * i) for i in range(3)]
    # (step, elapsed ms): inside the momentum warm-up (700 of 1500 steps) and the LR warmdown (frac 0.6).
    steps = [(700 + i, 0.60 * 588_000 + 120.0 * i) for i in range(3)]
    set_looping(R, P, True)
    R0 = {k: v.detach().clone() for k, v in R.state_dict().items()}
    P0 = {k: v.detach().clone() for k, v in P.state_dict().items()}
    P_gpu, P_cpu = copy.deepcopy(P), copy.deepcopy(P)

    ref_opts, ref_log, ref_grads = run_reference_steps(ctx, h, R, names, steps, micro)
    ctx.snapshots = [P0]
    clip_order = [names.to_pg_name[n] for n, _ in R.named_parameters()]
    pg_opts, pg_log = run_pgolf_steps(cfg, P, steps, micro, ref_grads, clip_order,
                                      ns=reference_ns_per_matrix(ctx.ref), snapshots=ctx.snapshots)
    for (step, _), a, b in zip(steps, pg_log, ref_log):
        rep.compare(f"step {step}: lr multiplier {b['scale']:.4f}", a["scale"], b["scale"], 1e-12, "abs")
        rep.compare(f"step {step}: muon momentum {b['momentum']:.5f}", a["momentum"], b["momentum"], 1e-12, "abs")
        rep.compare(f"step {step}: train loss {b['loss']:.5f}", a["loss"], b["loss"], 1e-5)
        rep.compare(f"step {step}: pre-clip grad norm {b['norm']:.3f} (clip {h.grad_clip_norm})",
                    a["norm"], b["norm"], 1e-4)
    R1 = R.state_dict()
    for group, (dp, dr) in group_deltas(names, R0, R1, P0, P.state_dict()).items():
        rep.compare(f"3 steps: weight change, {group}", dp, dr, 0.1 if group == GROUPS[3] else 1e-6)
    rep.note("how", "pgolf's own forward/backward/accumulation ran (loss, grad norm above); at the clip its "
             "gradients were replaced by the reference's and handed over in the reference's parameter order "
             "(pgolf registers resid_mix/q_gain first: the total norm then rounds differently by an ulp); "
             "Muon used the reference's Newton-Schulz")
    layout = reference_layout_sensitivity(ctx, names, ref_grads[0])
    rep.note("tall matrices", "pgolf orthogonalizes a contiguous transpose, the reference a transposed view; "
             f"the reference's own NS on those two layouts of the step-1 fc directions: max rel {layout:.2e}")
    compare_param_groups(rep, ref_opts, pg_opts, R, P, names)
    check_newton_schulz(rep, ctx, R)

    # pgolf's own orthogonalization, stacked bf16 (GPU path) and fp32 (CPU path): numerics only.
    for label, model, ns, fused in (("GPU path: stacked bf16", P_gpu, bf16_newton_schulz, True),
                                    ("CPU path: fp32", P_cpu, None, False)):
        run_pgolf_steps(cfg, model, steps, micro, ref_grads, clip_order, ns=ns, fused=fused)
        dp, dr = (torch.cat(t) for t in zip(*[group_deltas(names, R0, R1, P0, model.state_dict())[g]
                                              for g in GROUPS[2:]]))
        rep.note(f"pgolf Newton-Schulz, {label}", f"Muon weight change vs reference: L2 rel {l2_rel(dp, dr):.2e}, "
                 f"max rel {max_diff(dp, dr)[1]:.2e}")
    rep.note("why not exact", "Newton-Schulz's quintic amplifies small singular directions ~3.4x per "
             "iteration, so bf16 rounding differences grow to a few % of an update element")
    ctx.small = SimpleNamespace(h=h, R=R, P=P, names=names)
    check_schedules(rep, ctx)


def reference_layout_sensitivity(ctx, names, grads: dict) -> float:
    """Max over tall matrices of the reference's zeropower on a (row-normalized) gradient as is vs as a
    contiguous transpose (what pgolf's stacking hands over): the rounding floor for tall matrices."""
    zp, steps, worst = ctx.ref.zeropower_via_newtonschulz5, ctx.h.muon_backend_steps, 0.0
    for name, g in grads.items():
        if g.ndim == 2 and g.shape[0] > g.shape[1] and name.startswith("blocks"):
            G = g / g.norm(dim=-1, keepdim=True).clamp_min(1e-7)
            worst = max(worst, max_diff(zp(G.T.contiguous(), steps=steps).T.float(), zp(G, steps=steps).float())[1])
    return worst


def check_newton_schulz(rep: Report, ctx, R) -> None:
    """pgolf.muon.newton_schulz on bf16 input (its GPU path) vs the reference's zeropower, same input."""
    g = torch.Generator().manual_seed(SEED)
    worst = 0.0
    shapes = sorted({tuple(p.shape) for n, p in R.named_parameters() if p.ndim == 2 and n.startswith("blocks")
                     and "resid_mix" not in n})
    for shape in shapes:
        G = torch.randn(shape, generator=g)
        want = ctx.ref.zeropower_via_newtonschulz5(G, steps=ctx.h.muon_backend_steps).float()
        tall = shape[0] > shape[1]
        got = newton_schulz((G.T if tall else G).to(torch.bfloat16), ctx.train_cfg["muon_ns_steps"]).float()
        worst = max(worst, max_diff(got.T if tall else got, want)[1])
    rep.verdict(f"Newton-Schulz (bf16), shapes {shapes}", worst <= 0, f"max rel {worst:.3e} (tol: bitwise)")


def compare_param_groups(rep: Report, ref_opts, pg_opts, R, P, names) -> None:
    """Each optimizer group's members (mapped names) and hyperparameters, reference vs pgolf."""
    ref_name = {id(p): names.to_pg_name[n] for n, p in R.named_parameters()}
    pg_name = {id(p): n for n, p in P.named_parameters()}

    def table(optimizers, name_of):
        out = {}
        for opt in optimizers:
            for g in opt.param_groups:
                members = frozenset(name_of[id(p)] for p in g["params"])
                if isinstance(opt, torch.optim.AdamW):
                    out[members] = ("AdamW", g["base_lr"], tuple(g["betas"]), g["eps"], g["weight_decay"])
                else:
                    out[members] = ("Muon", g["base_lr"], g["nesterov"], g["weight_decay"],
                                    g.get("backend_steps", g.get("ns_steps")), g.get("row_normalize", g.get("row_norm")))
        return out

    ref_t, pg_t = table(ref_opts, ref_name), table(pg_opts, pg_name)
    problems = [] if set(ref_t) == set(pg_t) else ["the groups hold different parameters"]
    problems += [f"ref {ref_t[m]} vs pgolf {pg_t[m]}" for m in ref_t if m in pg_t and ref_t[m] != pg_t[m]]
    summary = ", ".join(f"{hp[0]} x{len(m)} lr {hp[1]} wd {hp[4] if hp[0] == 'AdamW' else hp[3]}"
                        for m, hp in ref_t.items())
    rep.verdict("optimizer groups: members and hyperparameters", not problems, "; ".join(problems) or summary)


def reference_momentum_curve(ctx, steps) -> list[float]:
    """The Muon momentum the reference's step_fn sets at each step (model, data, optimizers stubbed)."""
    h = copy.copy(ctx.h)
    h.grad_accum_steps = 1
    muon = SimpleNamespace(param_groups=[{"base_lr": 1.0}])

    class StubOptimizers:
        optimizer_muon = muon

        def __iter__(self):
            return iter([muon])

        def zero_grad_all(self):
            pass

        def step(self):
            pass

    leaf = torch.zeros((), requires_grad=True)
    step_fn = nested_function(ctx.ref.train_model, "step_fn", base_model=torch.nn.Linear(1, 1),
                              device=torch.device("cpu"), h=h, model=lambda x, y: leaf * 0.0,
                              optimizers=StubOptimizers(), train_loader=FixedLoader([(None, None)] * len(steps)))
    out = []
    for step in steps:
        step_fn(step, 1.0)
        out.append(muon.param_groups[0]["momentum"])
    return out


def check_schedules(rep: Report, ctx) -> None:
    """LR multiplier, loop switch and momentum as functions of time and step, at the record's pace."""
    h, cfg = ctx.h, ctx.train_cfg
    training_frac, lr_mul = reference_schedules(ctx, h)
    ref_mul, pg_mul, ref_loop, pg_loop = [], [], None, None
    for i in range(4001):  # 0 .. 588 s at the record's pace (~4990 steps)
        elapsed_ms, step = i * 588_000 / 4000, round(i * 4990 / 4000)
        frac, progress = training_frac(step, elapsed_ms), pgolf_progress(cfg, step, elapsed_ms)
        ref_mul.append(lr_mul(frac))
        pg_mul.append(pg_optim.lr_scale(step, progress, cfg["warmup_steps"], cfg["warmdown_frac"]))
        if ref_loop is None and frac >= h.enable_looping_at:
            ref_loop = step
        if pg_loop is None and progress >= cfg["loop_start_frac"]:
            pg_loop = step
    rep.compare("schedule: LR multiplier over 0..588 s (4001 points)", pg_mul, ref_mul, 1e-9, "abs")
    rep.verdict("schedule: loop switch step at the record's pace", ref_loop == pg_loop,
                f"reference {ref_loop}, pgolf {pg_loop} (record logs: 2888-2892)")
    steps = range(0, 3001)
    rep.compare("schedule: Muon momentum, steps 0..3000", [pg_optim.muon_momentum(s, cfg) for s in steps],
                reference_momentum_curve(ctx, steps), 1e-12, "abs")
    R = ctx.R
    sched = ModelConfig.from_train_cfg(cfg, ctx.vocab).schedule(True)
    rep.verdict("schedule: looped layer order", R.encoder_indices + R.decoder_indices == sched,
                f"reference {R.encoder_indices} + {R.decoder_indices}, pgolf {sched}")


# -----------------------------------------------------------------------------------------------
# 4. EMA


class StateView:
    """Stands in for the reference's base_model: state_dict() returns a given state."""

    def __init__(self, state):
        self.state = state

    def state_dict(self):
        return self.state


def check_ema(rep: Report, ctx) -> None:
    rep.section("4. EMA: the reference's own EMA statements vs pgolf.optim.EMA, same weights, 3 updates")
    small, h = ctx.small, ctx.h
    to_ref = small.names.to_ref_name
    # The optimizer check's pgolf weights before and after each step, tied embedding in bf16 as trained.
    states = [{k: (v.to(torch.bfloat16) if k == "tok_emb.weight" else v) for k, v in s.items()}
              for s in ctx.snapshots]
    init = reference_statement(ctx.ref.train_model, ast.Assign, "ema_state = {")
    update = reference_statement(ctx.ref.train_model, ast.With, "ema_state[name].mul_")
    scope = dict(vars(ctx.ref), torch=torch, ema_decay=h.ema_decay,
                 base_model=StateView({to_ref[k]: v for k, v in states[0].items()}))
    exec(init, scope)
    model = copy.deepcopy(small.P)
    model.tok_emb.weight.data = model.tok_emb.weight.data.to(torch.bfloat16)
    model.load_state_dict(states[0])
    ema = pg_optim.EMA(model, ctx.train_cfg["ema_decay"])
    for state in states[1:]:
        scope["base_model"] = StateView({to_ref[k]: v for k, v in state.items()})
        exec(update, scope)
        model.load_state_dict(state)
        ema.update()
    got = torch.cat([ema.state[k].flatten() for k in states[0]])
    want = torch.cat([scope["ema_state"][to_ref[k]].flatten() for k in states[0]])
    rep.compare(f"EMA state after {len(states) - 1} updates ({len(states[0])} tensors)", got, want, 1e-6)
    rep.note("EMA rounding", "fp32: the reference's mul_+add_ vs pgolf's lerp_ differ by a few ulp")
    rep.verdict("EMA dtype", all(v.dtype == torch.float32 for v in ema.state.values()), "fp32 on both sides")


# -----------------------------------------------------------------------------------------------
# 5. Hessians and GPTQ


def check_gptq(rep: Report, ctx) -> None:
    R, P, names, h = ctx.R, ctx.P, ctx.names, ctx.h
    n, seq = ctx.calib_batches, ctx.calib_seq_len
    rep.section(f"5. GPTQ: Hessians from {n} x 1 x {seq} calibration tokens (looping on), then quantize")
    set_looping(R, P, True)
    calib = batches(ctx.train_stream, n, 1, seq, start=ctx.calib_offset)
    with contextlib.redirect_stdout(io.StringIO()):
        H_ref = ctx.ref.collect_hessians(R, FixedLoader(calib), h, torch.device("cpu"), n_calibration_batches=n)
    inputs = iter([x for x, _ in calib])
    H_pg = pg_hessians.collect_hessians(P, lambda: next(inputs), n)
    num_tokens = H_pg.pop(pg_hessians.NUM_TOKENS_KEY)
    worst = max((max_diff(H_pg[names.to_pg_name[k]] / n, H)[1], k) for k, H in H_ref.items())
    rep.verdict(f"Hessians: {len(H_ref)} matrices (pgolf sum / {n} batches)",
                set(H_pg) == {names.to_pg_name[k] for k in H_ref} and worst[0] <= 1e-5,
                f"worst {worst[1]}: rel {worst[0]:.3e}  (tol rel 1e-05); {num_tokens} tokens")

    selected = select_quantized(ctx, R)
    sd_ref = {k: v.detach().clone() for k, v in R.state_dict().items() if k in selected}
    sd_pg = {names.to_pg_name[k]: names.to_pg(k, v) for k, v in sd_ref.items()}
    t0 = time.perf_counter()
    with threads(1), contextlib.redirect_stdout(io.StringIO()):
        q_ref, meta_ref = ctx.ref.gptq_mixed_quantize(sd_ref, H_ref, h)
        q_pg = quantize_state_dict(sd_pg, H_pg, ctx.quant_cfg)["tensors"]
        H_ref_named = {names.to_pg_name[k]: v for k, v in H_ref.items()}
        q_pg_refH = quantize_state_dict(sd_pg, H_ref_named, ctx.quant_cfg)["tensors"]
    n_quant = sum(1 for m in meta_ref.values() if "gptq" in m)
    rep.note("GPTQ scope", f"{n_quant} matrices ({'all' if ctx.gptq_all else 'block ' + str(ctx.gptq_block) + ' + tok_emb'}),"
             f" {len(sd_ref) - n_quant} passthrough tensors; 3 quantizations in {time.perf_counter() - t0:.0f}s")
    kinds_ok = all(("gptq" in meta_ref[k]) == (q_pg[names.to_pg_name[k]]["kind"] == "quant") for k in sd_ref)
    rep.verdict("quantized / fp16 passthrough split", kinds_ok, "same tensors quantized, same bits"
                if kinds_ok else "differs")
    compare_codes(rep, ctx, q_ref, q_pg_refH, sd_pg, H_ref_named, "same (reference) Hessians", 0.9999)
    rep.note("same-Hessian codes", "a few codes may differ: ulp-level arithmetic (pgolf averages the damping "
             "diagonal after the act-order permutation) cascades through GPTQ's error feedback")
    compare_codes(rep, ctx, q_ref, q_pg, sd_pg, H_ref_named, "own Hessians", 0.99)
    compare_quantized_loss(rep, ctx, sd_ref, q_ref, meta_ref, q_pg, q_pg_refH)


def select_quantized(ctx, R) -> set:
    """All tensors (full run) or the small ones + one block's matrices + tok_emb (--quick)."""
    names = set(R.state_dict())
    if ctx.gptq_all:
        return names
    block = f"blocks.{ctx.gptq_block}."
    return {k for k in names if R.state_dict()[k].numel() <= 65536 or k.startswith(block) or k == "tok_emb.weight"}


def compare_codes(rep: Report, ctx, q_ref: dict, q_pg: dict, sd_pg: dict, H: dict, label: str,
                  min_identical: float) -> None:
    """Identical int codes and fp16 scales per matrix (reference codes RoPE-flipped to pgolf's rows),
    and GPTQ's objective, the relative output error tr(E H E^T) / tr(W H W^T), on each side's codes."""
    names = ctx.names
    same = total = scale_mismatch = 0
    worst, worst_scale, err_ref, err_pg = (2.0, ""), 0.0, [], []
    for k, pn in names.to_pg_name.items():
        if k + ".q" not in q_ref:
            continue
        theirs_q, theirs_s = names.to_pg(k, q_ref[k + ".q"]), q_ref[k + ".scale"]
        mine = q_pg[pn]
        eq = int((mine["q"] == theirs_q).sum())
        same, total = same + eq, total + theirs_q.numel()
        worst = min(worst, (eq / theirs_q.numel(), k))
        scale_mismatch += int((theirs_s != mine["scale"]).sum())
        worst_scale = max(worst_scale, max_diff(mine["scale"].float(), theirs_s.float())[1])
        W, Hk = sd_pg[pn].float(), H[pn]
        err_ref.append(output_error_ratio(W, dequantize(theirs_q, theirs_s), Hk))
        err_pg.append(output_error_ratio(W, dequantize(mine["q"], mine["scale"]), Hk))
    frac = same / max(total, 1)
    rep.verdict(f"GPTQ codes, {label}", frac >= min_identical,
                f"identical {frac:.8f} of {total:,} (min {worst[0]:.6f} in {worst[1]}); tol >= {min_identical}")
    rep.verdict(f"GPTQ fp16 scales, {label}", scale_mismatch == 0,
                f"{scale_mismatch} rows differ, max rel {worst_scale:.3e}")
    rel = max(abs(a - b) / b for a, b in zip(err_pg, err_ref))
    rep.verdict(f"GPTQ output error ratio, {label}", rel <= 0.01,
                f"mean ref {np.mean(err_ref):.4e} pgolf {np.mean(err_pg):.4e}; worst matrix rel {rel:.2e} (tol 1e-02)")


def compare_quantized_loss(rep: Report, ctx, sd_ref, q_ref, meta_ref, q_pg, q_pg_refH) -> None:
    """Held-out loss of each side's dequantized model (looping on, as evaluated)."""
    R, P = ctx.R, ctx.P
    x, y = ctx.heldout_batch
    deq_ref = ctx.ref.dequantize_mixed(q_ref, meta_ref, sd_ref)
    Rq = copy.deepcopy(R)
    Rq.load_state_dict(deq_ref, strict=False)
    losses = {}
    with torch.no_grad():
        losses["reference fp32"] = float(R(x, y))
        losses["reference quantized"] = float(Rq(x, y))
        for label, q in (("pgolf quantized", q_pg), ("pgolf quantized, ref H", q_pg_refH)):
            Pq = copy.deepcopy(P)
            Pq.load_state_dict(dequantized_state_dict(q), strict=False)
            set_looping(R, Pq, True)
            losses[label] = float(Pq.loss(x, y))
    rep.note("held-out loss", ", ".join(f"{k} {v:.5f}" for k, v in losses.items()))
    for label, tol in (("pgolf quantized, ref H", 1e-5), ("pgolf quantized", 1e-3)):
        d = abs(losses[label] - losses["reference quantized"])
        rep.verdict(f"dequantized loss, {label}", d <= tol, f"|diff| {d:.3e} nats (tol {tol:.0e})")


# -----------------------------------------------------------------------------------------------
# 6. Byte counting and evaluation


class ConstantLoss(torch.nn.Module):
    """Loss 1 nat for every token: bpb then gives the byte count (reference eval_val / pgolf eval)."""

    def forward(self, x, y):
        return torch.ones(())

    def scored_losses(self, x, y, keep):
        return torch.ones(int(keep.sum()))


def reference_val_data(ctx, tokens: np.ndarray):
    sp, vocab = ctx.sp, ctx.vocab
    luts = ctx.ref.build_sentencepiece_luts(sp, vocab, torch.device("cpu"))
    return SimpleNamespace(sp=sp, val_tokens=torch.from_numpy(tokens), base_bytes_lut=luts[0],
                           has_leading_space_lut=luts[1], is_boundary_token_lut=luts[2])


def eval_h(ctx, seq_len: int, stride: int):
    h = copy.copy(ctx.h)
    h.eval_seq_len, h.eval_stride, h.grad_accum_steps, h.val_batch_tokens = seq_len, stride, 1, 8 * seq_len
    return h


def check_bytes(rep: Report, ctx) -> None:
    rep.section("6a. byte counting: the reference's LUTs and eval_val bytes vs pgolf.bpb")
    ref_luts = ctx.ref.build_sentencepiece_luts(ctx.sp, ctx.vocab, torch.device("cpu"))
    pg_luts = byte_luts(ctx.sp)
    for name, a, b in zip(("base_bytes", "has_leading_space", "is_boundary"), pg_luts, ref_luts):
        bad = np.flatnonzero(a != b.numpy())
        rep.verdict(f"LUT {name} ({len(a)} ids)", bad.size == 0 and a.shape == tuple(b.shape),
                    "identical" if bad.size == 0 else f"{bad.size} ids differ, e.g. "
                    + ", ".join(f"{i}:{ctx.sp.id_to_piece(int(i))!r} pg {a[i]} ref {b[i]}" for i in bad[:3]))
    stream = ctx.val_stream
    seq = 256
    trimmed = stream[:(len(stream) - 1) // seq * seq + 1]
    loss, bpb = ctx.ref.eval_val(eval_h(ctx, seq, seq), torch.device("cpu"), reference_val_data(ctx, trimmed),
                                 ConstantLoss())
    ref_bytes = round((len(trimmed) - 1) / (bpb * math.log(2)))
    pg = evaluate_tokens(ConstantLoss(), trimmed, pg_luts, seq, seq, 64, torch.device("cpu"))
    rep.compare(f"bytes of {len(trimmed) - 1} held-out targets: {ref_bytes}", pg["scored_bytes"], ref_bytes, 0, "abs")
    decoded = sum(len(ctx.sp.decode(d).encode("utf-8")) for d in ctx.val_docs)
    counted = int(target_bytes(stream[:-1], stream[1:], pg_luts).sum())
    rep.verdict(f"pgolf bytes == UTF-8 bytes of the decoded docs ({len(ctx.val_docs)})", counted == decoded,
                f"{counted} vs {decoded}")


def check_eval(rep: Report, ctx) -> None:
    seq, stride = ctx.eval_seq_len, 64
    n = 4 * seq  # (n - seq) % stride == 0: both sliding plans are the same windows
    tokens = ctx.val_stream[:n + 1]
    rep.section(f"6b. eval: sliding window (seq {seq}, stride {stride}) and plain, {n} targets, full model, looping on")
    R, P = ctx.R, ctx.P
    set_looping(R, P, True)
    luts = byte_luts(ctx.sp)
    cpu = torch.device("cpu")
    val_data = reference_val_data(ctx, tokens)
    ref_slide = ctx.ref.eval_val_sliding(eval_h(ctx, seq, stride), cpu, val_data, R, batch_seqs=32)
    pg_slide = evaluate_tokens(P, tokens, luts, seq, stride, 32, cpu)
    rep.compare(f"sliding val_loss {ref_slide[0]:.6f}", pg_slide["val_loss"], ref_slide[0], 1e-6)
    rep.compare(f"sliding val_bpb  {ref_slide[1]:.6f}", pg_slide["val_bpb"], ref_slide[1], 1e-6)
    ref_plain = ctx.ref.eval_val(eval_h(ctx, seq, stride), cpu, val_data, R)
    pg_plain = evaluate_tokens(P, tokens, luts, seq, seq, 32, cpu)
    rep.compare(f"plain val_loss {ref_plain[0]:.6f}", pg_plain["val_loss"], ref_plain[0], 1e-6)
    rep.compare(f"plain val_bpb  {ref_plain[1]:.6f}", pg_plain["val_bpb"], ref_plain[1], 1e-6)
    rep.note("sliding - plain", f"val_bpb {ref_slide[1] - ref_plain[1]:+.5f} (reference), "
             f"{pg_slide['val_bpb'] - pg_plain['val_bpb']:+.5f} (pgolf)")


# -----------------------------------------------------------------------------------------------


CHECKS = {"0": [check_hyperparameters], "1": [check_forward], "2": [check_backward], "3": [check_optimizer],
          "4": [check_ema], "5": [check_gptq], "6": [check_bytes, check_eval]}


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", required=True, help="JSONL of 200 documents with a `text` field (100 train, 100 held out)")
    parser.add_argument("--ref", default=str(REPO / ".ref"), help="folder with the record's script (default .ref)")
    parser.add_argument("--module", default="train_gpt_human", help="reference module name in --ref")
    parser.add_argument("--quick", action="store_true", help="shorter sequences, GPTQ on one block only")
    parser.add_argument("--only", default=",".join(CHECKS),
                        help="comma-separated check numbers (default: all; 4 needs 3)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: on 2 cores shared with another process, 2 threads "
                             "ran 6x slower)")
    return parser.parse_args(argv)


def make_context(args, ref):
    h = ref.Hyperparameters()
    sp = spm.SentencePieceProcessor(model_file=h.tokenizer_path)
    vocab = int(sp.vocab_size())
    train_cfg, quant_cfg, eval_cfg = load_train_cfg()
    train_stream, val_stream, val_docs = load_streams(sp, Path(args.docs))
    R, P, names = build_pair(ref, h, train_cfg, vocab)
    fb_len = 128 if args.quick else 512
    calib_len = 256 if args.quick else 512
    ctx = SimpleNamespace(
        ref=ref, h=h, sp=sp, vocab=vocab, train_cfg=train_cfg, quant_cfg=quant_cfg, eval_cfg=eval_cfg,
        train_stream=train_stream, val_stream=val_stream, val_docs=val_docs, R=R, P=P, names=names,
        fb_cache={}, fb_batch=batches(train_stream, 1, 2, fb_len)[0],
        opt_seq_len=64 if args.quick else 128, opt_offset=100_000,
        calib_batches=2 if args.quick else 4, calib_seq_len=calib_len, calib_offset=200_000,
        heldout_batch=batches(val_stream, 1, 1, 512 if args.quick else 1024, start=50_000)[0],
        gptq_all=not args.quick, gptq_block=4, eval_seq_len=128 if args.quick else 256)
    return ctx


def main(argv=None) -> int:
    args = parse_args(argv)
    t0 = time.perf_counter()
    torch.set_num_threads(args.threads)
    ref = import_reference(Path(args.ref).resolve(), args.module)
    import warnings
    warnings.filterwarnings("ignore", message=".*CUDA is not available.*")
    ctx = make_context(args, ref)
    n_ref, n_pg = (sum(p.numel() for p in m.parameters()) for m in (ctx.R, ctx.P))
    print(f"reference {args.module} from {args.ref}; torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"params reference {n_ref:,} pgolf {n_pg:,}; tokens train {len(ctx.train_stream):,} "
          f"held-out {len(ctx.val_stream):,}")
    rep = Report()
    rep.verdict("parameter count", n_ref == n_pg == 35_943_512, f"{n_ref:,} / {n_pg:,} (record: 35,943,512)")
    only = args.only.split(",")
    if "4" in only and "3" not in only:
        only.append("3")
    for key, checks in CHECKS.items():
        for check in checks if key in only else []:
            check(rep, ctx)
    print(f"\n{'FAILED: ' + ', '.join(rep.failures) if rep.failures else 'ALL PASS'}  "
          f"(wall {time.perf_counter() - t0:.0f}s)")
    return 1 if rep.failures else 0


if __name__ == "__main__":
    sys.exit(main())
