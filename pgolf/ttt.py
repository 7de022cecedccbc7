"""Legal score-first test-time training (TTT) over the validation documents (DESIGN.md §1, rules C1-C4).

Per-document LoRA TTT: each document is scored in chunks of `ttt_chunk_tokens` targets, each chunk with up
to `ttt_seq_len` tokens of its own document as context; a chunk's losses are taken (the score, final) and
only then does the document's adapter step on that chunk; the adapters start fresh at every document (with
`ttt_lora_warm_a`, B alone: A carries over from the row's earlier documents, all scored already), and a
document's last chunk is never trained on. Phased global TTT: after each phase (`ttt_phase_docs`
documents of `ttt_phase_order`) is scored, SGD on the base weights on every rank together, over every
document scored so far (the 1.0611 record's form: longest first, `scored`) or over the phase just scored
(the chunked form of earlier records: file order, `phase`).

So a token's loss comes from the artifact's weights, trained only on earlier phases' documents, on the
earlier chunks of its own document and (warm A) on its row's earlier documents: tokens already scored
(C1, C3). The loss is the cross-entropy of the full softmax over the vocabulary (C2). The documents'
targets partition the stream's, each scored once in one pass (C4). The warm-up runs on random tokens
drawn from a fixed seed, never on validation tokens.

Speed (the same computation): a chunk's windows are gathered from the stream by index tensors
(pgolf.ttt_windows) and the head runs on the scored columns picked by index, so the chunk loop makes no
host sync; with `eval.compile` on CUDA the hidden states (the blocks' adapters included) go through torch.compile with
the window's rows and width dynamic (compiled_by_window), and the warm-up compiles every graph scoring
needs. Eager, a chunk pass is thousands of small kernels (about 120 ms for three rows of 2,048 tokens on an
H200, 40 ms compiled), so scoring needs the compiled graph. The global steps run eager: there are few of
them, and their graphs (base weights trainable, adapters off) would cost the warm-up a compile of their own.
"""
from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, fields

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from pgolf.bpb import target_bytes
from pgolf.lora import BatchedLoRA
from pgolf.ttt_plan import Doc, batches, global_step_docs, processing_order, rank_share, split_documents
from pgolf.ttt_windows import BatchSpans, ChunkWindows, chunk_windows, running_rows

log = logging.getLogger(__name__)
WARMUP_SEED = 20240520  # the warm-up's random tokens: fixed, independent of the validation data


@dataclass(frozen=True)
class TTTSettings:
    """The eval section's ttt_* keys (config/schema.yaml holds their defaults and meaning)."""
    ttt_lora_rank: int
    ttt_lora_alpha: float | None
    ttt_lora_targets: list
    ttt_lora_warm_a: bool
    ttt_lora_per_pass: bool
    ttt_optimizer: str
    ttt_lr: float
    ttt_beta1: float
    ttt_beta2: float
    ttt_eps: float
    ttt_weight_decay: float
    ttt_steps: int
    ttt_chunk_tokens: int
    ttt_seq_len: int | None
    ttt_batch_docs: int
    ttt_phase_docs: list
    ttt_phase_order: str
    ttt_global_on: str
    ttt_global_lr: float
    ttt_global_momentum: float
    ttt_global_epochs: int
    ttt_global_batch_tokens: int
    ttt_global_lr_schedule: str
    ttt_global_grad_clip: float
    ttt_warmup_batches: int

    @classmethod
    def from_eval_cfg(cls, cfg: dict) -> "TTTSettings":
        missing = [f.name for f in fields(cls) if f.name not in cfg]
        if missing:
            raise KeyError(f"eval config is missing {', '.join('eval.' + m for m in missing)} "
                           f"(config/schema.yaml gives their defaults)")
        return cls(**{f.name: cfg[f.name] for f in fields(cls)})

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def ttt_requested(cfg: dict) -> bool:
    """TTT is on when LoRA adapters or global phases are asked for."""
    return int(cfg.get("ttt_lora_rank") or 0) > 0 or bool(cfg.get("ttt_phase_docs"))


def _autocast(device: torch.device):
    return (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda"
            else contextlib.nullcontext())


def _chunk_losses(model, lora: BatchedLoRA | None, w: ChunkWindows) -> torch.Tensor:
    """[rows, chunk] NLL (nats, float32) of the chunk's targets under the full softmax; 0 where not valid.
    The head runs on the scored columns only (picked by index: a fixed [rows, chunk] shape, no host sync)."""
    hidden = model.hidden_states(w.inputs)
    picked = hidden.gather(1, w.cols[..., None].expand(-1, -1, hidden.size(-1)))
    logits = model.head(picked, lora.logit_delta(picked) if lora is not None else None)
    nll = F.cross_entropy(logits.flatten(0, 1), w.targets.flatten(), reduction="none").view_as(w.targets)
    return torch.where(w.valid, nll.float(), 0.0)


def _make_optimizer(params, s: TTTSettings) -> torch.optim.Optimizer:
    if s.ttt_optimizer == "adam":  # fused on CUDA: one kernel for every adapter, not several per tensor
        return torch.optim.AdamW(params, lr=s.ttt_lr, betas=(s.ttt_beta1, s.ttt_beta2), eps=s.ttt_eps,
                                 weight_decay=s.ttt_weight_decay, fused=params[0].is_cuda)
    if s.ttt_optimizer == "sgd":
        return torch.optim.SGD(params, lr=s.ttt_lr, weight_decay=s.ttt_weight_decay)
    raise ValueError(f"eval.ttt_optimizer must be adam or sgd, got {s.ttt_optimizer!r}")


def score_batch(model, lora: BatchedLoRA | None, stream, batch: list[Doc], s: TTTSettings, luts,
                context: int, token_nll: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Score a batch of documents (longest first) chunk by chunk, each chunk scored before its adapter
    steps on it. Returns per-document (NLL nats float64, bytes int64); fills token_nll[doc.index] when given."""
    if any(a.num_targets < b.num_targets for a, b in zip(batch, batch[1:])):
        raise ValueError("score_batch: documents must come longest first (running documents are a batch prefix)")
    device = stream.device
    nll = torch.zeros(len(batch), dtype=torch.float64, device=device)
    nbytes = torch.zeros(len(batch), dtype=torch.int64, device=device)
    optimizer = None
    if lora is not None:
        lora.reset(keep_a=s.ttt_lora_warm_a)
        optimizer = _make_optimizer(list(lora.parameters()), s)
    spans, chunk = BatchSpans.of(batch, device), s.ttt_chunk_tokens
    for first in range(0, spans.longest, chunk):
        rows = running_rows(batch, first)
        w = chunk_windows(stream, spans, rows, chunk, first, context)
        training = lora is not None and spans.longest > first + chunk
        for step in range(s.ttt_steps if training else 1):
            # With adapters every chunk runs with grad, trained on or not: one compiled graph serves both.
            with torch.set_grad_enabled(lora is not None), _autocast(device):
                losses = _chunk_losses(model, lora, w)
            if step == 0:  # the score: taken before any update on these tokens, never revised
                _record(losses.detach(), w, luts, nll, nbytes, batch, token_nll)
            if training:
                _adapter_step(losses, w.valid, spans.num_targets[:rows] > first + chunk, optimizer)
    return nll, nbytes


def _record(losses, w: ChunkWindows, luts, nll, nbytes, batch, token_nll) -> None:
    rows = losses.size(0)
    nll[:rows] += losses.double().sum(1)
    nbytes[:rows] += torch.where(w.valid, target_bytes(w.prev, w.targets, luts), 0).sum(1)
    if token_nll is not None:  # tests only: a host copy per chunk
        for r in range(rows):
            token_nll.setdefault(batch[r].index, []).extend(losses[r][w.valid[r]].tolist())


def _adapter_step(losses, valid, going_on, optimizer) -> None:
    """One step of every continuing document's adapter on its mean chunk loss (rows are independent:
    each adapter's gradient comes from its own document alone; a finished row's gradient is zero)."""
    per_doc = losses.sum(1) / valid.sum(1).clamp_min(1)
    optimizer.zero_grad(set_to_none=True)
    torch.where(going_on, per_doc, 0.0).sum().backward()
    optimizer.step()


def _warmup_docs(lengths: list[int], vocab_size: int, bos_id: int, gen) -> tuple[torch.Tensor, list[Doc]]:
    """Random documents of these lengths (longest first), each BOS + random ids, from the generator alone."""
    starts = np.cumsum([0, *lengths])
    stream = torch.randint(0, vocab_size, (int(starts[-1]) + 1,), generator=gen)
    stream[starts] = bos_id
    return stream, [Doc(i, int(starts[i]), n) for i, n in enumerate(lengths)]


def warm_up(model, lora: BatchedLoRA | None, s: TTTSettings, luts, vocab_size: int, bos_id: int,
            context: int, device, one_document_batches: bool) -> None:
    """`ttt_warmup_batches` scoring-and-adapting passes over random documents (fixed seed): kernels, caches,
    allocator and compiled graphs warmed on the shapes scoring will use. It is given no validation token.

    A pass's batch covers the shapes of real batches: every row for two chunks (the chunk width and twice
    it), then the first document out to a full `context` window (with one finished row: running_rows).
    `one_document_batches` (scoring has a batch of one document) adds a batch of one: a row alone is a graph
    of its own under torch.compile. With global phases, the global steps' forward and backward run once on
    random documents too (gradients dropped, no step: the weights stay the artifact's)."""
    from pgolf.ttt_global import warm_up_gradients, warm_up_lengths

    gen = torch.Generator().manual_seed(WARMUP_SEED)
    chunk = s.ttt_chunk_tokens
    lengths = [max(context, 2 * chunk) + chunk] + [2 * chunk] * (s.ttt_batch_docs - 1)
    for _ in range(s.ttt_warmup_batches):
        stream, docs = _warmup_docs(lengths, vocab_size, bos_id, gen)
        score_batch(model, lora, stream.to(device), docs, s, luts, context)
        if one_document_batches and len(docs) > 1:
            score_batch(model, lora, stream.to(device), docs[:1], s, luts, context)
    if s.ttt_warmup_batches and s.ttt_phase_docs:  # the global steps' largest micro-batch: kernels, allocator
        stream, docs = _warmup_docs(warm_up_lengths(s, context), vocab_size, bos_id, gen)
        with _adapters_off(lora), _uncompiled(model):
            warm_up_gradients(model, stream.to(device), docs, s, context, _autocast(device))
    if lora is not None:
        lora.reset()


@contextlib.contextmanager
def _uncompiled(model):
    """The model's own hidden_states inside (evaluate_documents shadows it with the compiled one)."""
    compiled = model.__dict__.pop("hidden_states", None)
    try:
        yield
    finally:
        if compiled is not None:
            model.hidden_states = compiled


@contextlib.contextmanager
def _adapters_off(lora: BatchedLoRA | None):
    """Global phases train the base weights alone."""
    if lora is not None:
        lora.active = False
    try:
        yield
    finally:
        if lora is not None:
            lora.active = True


def evaluate_documents(model, tokens: np.ndarray, luts, bos_id: int, s: TTTSettings, context: int,
                       device: torch.device, rank: int = 0, world_size: int = 1, token_nll: dict | None = None,
                       compile_backend: str | None = None) -> dict:
    """Score every validation document with TTT, each chunk with up to `context` tokens of its document
    (eval.ttt_seq_len, else eval.seq_len). Returns the totals, `warmup_seconds`, `compiled_graphs` (by the
    warm-up, while scoring) and `docs`, a per-document table (file index, processing position, tokens,
    bytes, NLL nats) identical on every rank.
    `token_nll` (tests) collects this rank's per-target losses by document index. `compile_backend` (e.g.
    "inductor") runs the model's hidden states, the blocks' adapters included, through torch.compile; None: eager."""
    docs = split_documents(tokens, bos_id)
    phases = processing_order(docs, s.ttt_phase_docs, s.ttt_phase_order)
    if len(phases) < len(s.ttt_phase_docs) + 1:
        log.warning("eval.ttt_phase_docs %s: only cuts inside 1..%d documents apply (%d phase(s))",
                    s.ttt_phase_docs, len(docs) - 1, len(phases))
    model.eval().to(device).requires_grad_(False)
    lora = (BatchedLoRA(model, s.ttt_lora_targets, s.ttt_lora_rank, s.ttt_lora_alpha, s.ttt_batch_docs,
                        per_pass=s.ttt_lora_per_pass) if s.ttt_lora_rank > 0 else None)
    luts_dev = tuple(torch.as_tensor(t, device=device) for t in luts)
    if compile_backend is not None:
        # An instance attribute shadows the method (for _chunk_losses; the global steps take it off:
        # _uncompiled); deleted again below.
        model.hidden_states = compiled_by_window(model.hidden_states, compile_backend)
    try:
        started, graphs = time.perf_counter(), [_graphs_compiled()]
        one_document = any(len(b) == 1 for phase in phases
                           for b in batches(rank_share(phase, rank, world_size), s.ttt_batch_docs))
        warm_up(model, lora, s, luts_dev, model.config.vocab_size, bos_id, context, device, one_document)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        warmup_seconds, graphs = time.perf_counter() - started, graphs + [_graphs_compiled()]
        stream = torch.from_numpy(tokens.astype(np.int64)).to(device)
        table = _score_phases(model, lora, stream, phases, s, luts_dev, context, rank, world_size, token_nll)
        graphs.append(_graphs_compiled())
    finally:
        if lora is not None:
            lora.remove()
        if compile_backend is not None:
            del model.hidden_states
    compiled = {"warm_up": graphs[1] - graphs[0], "scoring": graphs[2] - graphs[1]}
    if compiled["scoring"]:
        log.warning("TTT compiled %d graph(s) while scoring, shapes or modes the warm-up did not cover "
                    "(run with TORCH_LOGS=recompiles to see which)", compiled["scoring"])
    return {**_summary(table, docs, world_size), "warmup_seconds": warmup_seconds, "compiled_graphs": compiled}


def compiled_by_window(hidden_states, backend):
    """hidden_states through torch.compile with the window's rows and width dynamic (they change from chunk
    to chunk) and all else static. `dynamic=True` would make every size and float symbolic: the weights'
    shapes too, and a float made symbolic then specialized restarts the trace, which doubled the compile."""
    compiled = torch.compile(hidden_states, backend=backend)

    def by_window(inputs: torch.Tensor) -> torch.Tensor:
        torch._dynamo.maybe_mark_dynamic(inputs, 0)
        torch._dynamo.maybe_mark_dynamic(inputs, 1)
        return compiled(inputs)
    return by_window


def _graphs_compiled() -> int:
    """Graphs torch.compile has captured in this process so far (dynamo's own count)."""
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


def _score_phases(model, lora, stream, phases, s, luts, context, rank, world_size, token_nll) -> torch.Tensor:
    """[num_docs, 4] float64 (position, tokens, bytes, nll) by file index, filled by this rank's documents."""
    from pgolf.ttt_global import global_sgd

    device = stream.device
    table = torch.zeros(max(d.index for p in phases for d in p) + 1, 4, dtype=torch.float64, device=device)
    first_position = 0
    shares = [rank_share(phase, rank, world_size) for phase in phases]
    # In scored tokens, so the bar's rate is the scoring rate (pgolf.progress relays it to the terminal).
    bar = tqdm(total=sum(d.num_targets for share in shares for d in share), desc="eval", unit="tok", leave=False,
               disable=rank != 0)
    for k, phase in enumerate(phases):
        position = {d.index: first_position + i for i, d in enumerate(phase)}
        for batch in batches(shares[k], s.ttt_batch_docs):
            nll, nbytes = score_batch(model, lora, stream, batch, s, luts, context, token_nll)
            bar.update(sum(d.num_targets for d in batch))
            rows = torch.tensor([d.index for d in batch], device=device)
            table[rows, 0] = torch.tensor([position[d.index] for d in batch], dtype=torch.float64, device=device)
            table[rows, 1] = torch.tensor([d.num_targets for d in batch], dtype=torch.float64, device=device)
            table[rows, 2], table[rows, 3] = nbytes.double(), nll
        first_position += len(phase)
        if k + 1 < len(phases):  # the phase is scored on every rank: now, and only now, train on it (and before)
            with _adapters_off(lora), _uncompiled(model):
                trained = global_step_docs(phases, k, s.ttt_global_on)
                global_sgd(model, stream, trained, s, context, rank, world_size, _autocast(device))
            if lora is not None:  # warm A starts over on the new base weights, as the record's new adapters
                lora.reset()
    bar.close()
    return table


def _summary(table: torch.Tensor, docs: list[Doc], world_size: int) -> dict:
    if world_size > 1:
        dist.all_reduce(table)  # each document filled by exactly one rank
    rows = table[[d.index for d in docs]].cpu()
    nll_total, byte_total = float(rows[:, 3].sum()), int(rows[:, 2].sum())
    scored = int(rows[:, 1].sum())
    return {
        "nll_sum": nll_total, "scored_tokens": scored, "scored_bytes": byte_total,
        "docs": {"doc_index": np.array([d.index for d in docs], dtype=np.int64),
                 "position": rows[:, 0].numpy().astype(np.int64), "tokens": rows[:, 1].numpy().astype(np.int64),
                 "bytes": rows[:, 2].numpy().astype(np.int64), "nll_nats": rows[:, 3].numpy()},
    }


DOC_TABLE_NAME = "eval_docs.parquet"  # beside eval.json: one row per validation document


def evaluate_with_ttt(model, tokens: np.ndarray, tokenizer_model, cfg: dict, device, rank: int,
                      world_size: int) -> tuple[dict, dict]:
    """The eval stage's TTT path: (result in evaluate_tokens' form plus the settings and the warm-up seconds,
    per-document table). `eval.compile` compiles the chunk forward with Inductor, on CUDA only."""
    import sentencepiece as spm

    from pgolf.bpb import bits_per_byte, byte_luts

    settings = TTTSettings.from_eval_cfg(cfg)
    sp = spm.SentencePieceProcessor(model_file=str(tokenizer_model))
    out = evaluate_documents(model, tokens, byte_luts(sp), sp.bos_id(), settings,
                             settings.ttt_seq_len or cfg["seq_len"], device, rank, world_size,
                             compile_backend="inductor" if cfg.get("compile") and device.type == "cuda" else None)
    if out["scored_tokens"] != tokens.size - 1:  # the documents' contract: every target exactly once
        raise AssertionError(f"TTT scored {out['scored_tokens']} targets, expected {tokens.size - 1}")
    result = {"val_loss": out["nll_sum"] / out["scored_tokens"],
              "val_bpb": bits_per_byte(out["nll_sum"], out["scored_bytes"]),
              "scored_tokens": out["scored_tokens"], "scored_bytes": out["scored_bytes"],
              "scored_docs": len(out["docs"]["doc_index"]), "warmup_seconds": out["warmup_seconds"],
              "compiled_graphs": out["compiled_graphs"], "ttt": settings.as_dict()}
    return result, out["docs"]


def write_doc_table(path, docs: dict) -> None:
    """The per-document table as parquet, written whole or not at all."""
    import pandas as pd

    from pgolf.io import atomic_path

    with atomic_path(path) as tmp:
        pd.DataFrame(docs).sort_values("position").to_parquet(tmp, index=False)
