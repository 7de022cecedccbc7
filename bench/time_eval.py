#!/usr/bin/env python3
"""Time the eval stage on the challenge model: sliding-window val_bpb of a random-weight model, 1 or N ranks.

    python3 bench/time_eval.py --out /tmp/te --nproc 1 [--val-tokens 4000000] [--device cuda]
                               [--tokenizer .ref/data/tokenizers/fineweb_8192_bpe.model] [--set key=yaml ...]
                               [--ttt] [--doc-tokens 811] [--val-dir DIR] [--rank-share 8]

Random weights and random sp8192 ids: the scores mean nothing, the time is the eval stage's own
(pgolf.launch.run_eval: in-process for 1 rank, torchrun for more). Prints the whole stage's seconds, the
scoring loop's tokens/s per rank, the warm-up (compile) seconds, and the projection to the challenge's
40,540,160 validation tokens on 8 ranks, which must stay under the 600 s eval budget: the scoring rate
times 8 (documents dealt evenly, no slowdown from sharing a node) plus the fixed costs (model load,
warm-up: everything outside the scoring loop) once. Writes OUT/eval.json. The eval section is challenge.yaml's
(`eval.compile: true`; `--eval-set compile=false` times the eager forward). `--set` overrides train keys (a tiny model
for a CPU smoke run: `--device cpu --set num_layers=2 loop_layers=[1] model_dim=32 num_heads=2 num_kv_heads=1
--eval-set seq_len=128 stride=64`).

`--ttt` times the config's `ttt` ablation (the record's phased score-first LoRA TTT). TTT scores documents,
so the random stream is cut into documents, each BOS + random ids, with lengths drawn from an exponential
distribution of mean `--doc-tokens` (811: the challenge split's 40,540,160 tokens over 50,000 documents);
`--val-dir` times real validation shards instead (their document lengths are what TTT's cost depends on): its
fineweb_val_*.bin only (a folder may hold train shards too), read with `--tokenizer`, whose vocabulary must
cover their ids. `--eval-set compile=true` compiles TTT's chunk forward (dynamic shapes); `compile=false`
times it eager. With TTT it also projects by chunk passes (pgolf.ttt_plan.chunk_passes: a batch of documents
takes one pass per chunk of its longest document; a pass is small, so its latency weighs): the measured
seconds per pass times the passes of the split, modelled as 50,000 documents of exponential lengths, on 8 GPUs.
When the measured batches are emptier than the split's, the token projection is an upper bound and the pass
projection a lower one. `--rank-share 8` measures one rank's work of 8 directly instead of projecting it:
random documents of the split's mean length, 1/8 of its tokens, the ttt phases' document counts divided by 8
(so the global steps train on the same longest fraction of the documents, an eighth of the split's tokens),
and a global batch for which it takes as many global steps as one rank of 8 does on the modelled split (8 ranks
split each step, so that is 8 times as many steps of about an eighth of the targets); on one GPU its
whole-stage seconds are one rank's of 8, less the all-reduces.
"""
import argparse
import json
from pathlib import Path

import numpy as np
import torch

from run_pgolf_bench import apply_sets, eval_section, link_shards  # bench/ is on sys.path: python puts the script's folder there

from pgolf.config import load_config

ROOT = Path(__file__).resolve().parents[1]

CHALLENGE_VAL_TOKENS = 40_540_160
CHALLENGE_VAL_DOCS = 50_000
CHALLENGE_GPUS = 8


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--nproc", type=int, default=1)
    ap.add_argument("--val-tokens", type=int, default=4_000_000)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tokenizer", default=str(ROOT / ".ref" / "data" / "tokenizers" / "fineweb_8192_bpe.model"))
    ap.add_argument("--config", default=str(ROOT / "config" / "challenge.yaml"))
    ap.add_argument("--set", nargs="*", default=[], help="train overrides key=yaml_value")
    ap.add_argument("--eval-set", nargs="*", default=[], help="eval overrides key=yaml_value")
    ap.add_argument("--ttt", action="store_true", help="time the config's ttt ablation")
    ap.add_argument("--doc-tokens", type=float, default=CHALLENGE_VAL_TOKENS / CHALLENGE_VAL_DOCS, help="mean document length")
    ap.add_argument("--val-dir", default=None, help="time these validation shards instead of random ids")
    ap.add_argument("--rank-share", type=int, default=None, metavar="GPUS",
                    help="time one rank's share of the split on GPUS ranks (random documents; sets --val-tokens)")
    a = ap.parse_args()
    if a.rank_share and a.val_dir:
        ap.error("--rank-share times random documents: leave out --val-dir")
    from pgolf.launch import run_eval
    from pgolf.model import GPT, ModelConfig
    from pgolf.shard_format import write_shard
    import sentencepiece as spm

    out = Path(a.out)
    (out / "val").mkdir(parents=True, exist_ok=True)
    cfg = load_config(a.config)  # the schema's defaults filled in
    apply_sets(cfg["train"], a.set, "train")
    cfg["eval"] = eval_section(cfg, "ttt" if a.ttt else None)
    split_phases = list(cfg["eval"].get("ttt_phase_docs", []))  # the config's, for the modelled split
    apply_sets(cfg["eval"], a.eval_set, "eval")
    if a.rank_share:
        a.val_tokens = CHALLENGE_VAL_TOKENS // a.rank_share
        cfg["eval"] = share_of_rank(cfg["eval"], split_phases, a.rank_share)
    sp = spm.SentencePieceProcessor(model_file=a.tokenizer)
    vocab = sp.get_piece_size()
    torch.manual_seed(0)
    config = ModelConfig.from_train_cfg(cfg["train"], vocab)
    model = GPT(config)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.02)
    torch.save({"model_config": config.to_dict(), "state_dict": model.state_dict()}, out / "model.pt")
    if a.val_dir:
        val_dir = link_shards(Path(a.val_dir), "val", out / "val")
        check_vocab(val_dir, vocab, a.tokenizer)
    else:
        val_dir = out / "val"
        write_shard(val_dir / "fineweb_val_000000.bin", random_documents(a.val_tokens, a.doc_tokens, vocab, sp.bos_id()))
    run_eval("prequant", out / "model.pt", val_dir, a.tokenizer, cfg["eval"], a.device, out / "eval.json",
             out / "eval.log", nproc=a.nproc, threads=a.nproc)
    result = json.loads((out / "eval.json").read_text())
    report(result)
    if a.rank_share:
        print(f"one rank's share of {a.rank_share}: whole stage {result['eval_seconds']:.1f} s (budget 600 s; "
              f"the all-reduces of {a.rank_share} ranks not included; global steps of "
              f"{cfg['eval']['ttt_global_batch_tokens']:,} targets, as many as one rank's)", flush=True)
    elif "ttt" in result:
        report_chunk_passes(result, val_dir, sp.bos_id(), split_phases)
    return 0


def share_of_rank(eval_cfg: dict, split_phases: list[int], gpus: int) -> dict:
    """The eval section for one rank's share of `gpus`: the phases' document counts divided by `gpus` (the
    global steps train on the same longest fraction of the documents), and a global batch for which the
    share takes as many global steps as one of `gpus` ranks does on the modelled split. There each step's
    pieces are dealt across the ranks (pgolf.ttt_global), so a rank's part is about 1/`gpus` of a step."""
    phases = [max(1, p // gpus) for p in split_phases]
    split = split_docs()
    context = eval_cfg.get("ttt_seq_len") or eval_cfg["seq_len"]
    on = eval_cfg["ttt_global_on"]
    target = len(rank0_global_steps(split, split_phases, eval_cfg["ttt_global_batch_tokens"], gpus, context, on))
    share = split[::gpus]
    low, high = 1, eval_cfg["ttt_global_batch_tokens"]  # the share's step count falls as its batch grows
    while low < high:
        mid = (low + high) // 2
        if len(rank0_global_steps(share, phases, mid, 1, context, on)) > target:
            low = mid + 1
        else:
            high = mid
    return dict(eval_cfg, ttt_phase_docs=phases, ttt_global_batch_tokens=low)


def rank0_global_steps(docs: list, phases: list[int], batch_tokens: int, world_size: int, context: int,
                       on: str) -> list[int]:
    """Targets rank 0 of `world_size` trains on in each global step after each phase but the last (the
    documents of pgolf.ttt_plan.global_step_docs)."""
    from pgolf.ttt_global import step_groups
    from pgolf.ttt_plan import global_step_docs, processing_order, rank_share

    stream = torch.zeros(max(d.start + d.num_targets + 1 for d in docs), dtype=torch.uint8)  # lengths only
    cut = processing_order(docs, phases)
    steps = []
    for k in range(len(cut) - 1):
        for group in step_groups(stream, global_step_docs(cut, k, on), context, batch_tokens):
            steps.append(sum(targets.numel() for _, targets in rank_share(group, 0, world_size)))
    return steps


def random_documents(num_tokens: int, mean_doc_tokens: float, vocab: int, bos_id: int) -> np.ndarray:
    """num_tokens + 1 random ids cut into documents (BOS first) of exponentially distributed lengths."""
    rng = np.random.default_rng(0)
    ids = rng.integers(4, vocab, num_tokens + 1).astype(np.uint16)
    starts = np.cumsum(exponential_lengths(rng, mean_doc_tokens, num_tokens // 2))
    ids[0], ids[starts[starts < ids.size]] = bos_id, bos_id  # each document starts with BOS
    return ids


def exponential_lengths(rng, mean_doc_tokens: float, num_docs: int) -> np.ndarray:
    """Document lengths (tokens, at least 1) drawn from an exponential distribution of this mean."""
    return 1 + rng.exponential(mean_doc_tokens - 1, num_docs).astype(np.int64)


def split_docs() -> list:
    """The modelled split as documents of one stream (a BOS before each)."""
    from pgolf.ttt_plan import Doc

    lengths = split_lengths()
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1] + np.arange(1, len(lengths))])
    return [Doc(i, int(start), n) for i, (start, n) in enumerate(zip(starts, lengths))]


def split_lengths(num_docs: int = CHALLENGE_VAL_DOCS, mean_doc_tokens: float = CHALLENGE_VAL_TOKENS / CHALLENGE_VAL_DOCS) -> list[int]:
    """A model of the challenge split's document lengths: exponential with its 50,000 documents' mean, from a
    fixed seed (FineWeb-sample lengths rescaled to that mean gave 3 % fewer chunk passes: docs/benchmarks.md)."""
    return exponential_lengths(np.random.default_rng(0), mean_doc_tokens, num_docs).tolist()


def report_chunk_passes(r: dict, val_dir: Path, bos_id: int, split_phases: list[int]) -> None:
    """TTT's scoring time is about its chunk passes times the time of one (pgolf.ttt_plan.chunk_passes): the
    projection by passes, from the measured run's documents (its phases, --eval-set included) to the
    modelled split on 8 GPUs (the config's phases: `split_phases`)."""
    from pgolf.shard_format import load_tokens, shard_paths
    from pgolf.ttt_plan import chunk_passes, split_documents

    s = r["ttt"]
    plan = (s["ttt_phase_docs"], s["ttt_phase_order"], s["ttt_batch_docs"], s["ttt_chunk_tokens"])
    measured = chunk_passes(split_documents(load_tokens(shard_paths(val_dir)), bos_id), *plan, r["world_size"])
    per_pass = r["scoring_seconds"] / measured
    split = split_docs()
    passes = chunk_passes(split, split_phases, *plan[1:], CHALLENGE_GPUS)
    fixed = r["eval_seconds"] - r["scoring_seconds"]
    print(f"chunk passes: {measured:,} on the busiest rank here, {per_pass * 1000:.1f} ms each (global phases "
          f"included); the split modelled as {len(split):,} documents of exponential lengths takes {passes:,} per "
          f"rank on {CHALLENGE_GPUS} GPUs: {fixed:.1f} s fixed + {passes:,} x {per_pass * 1000:.1f} ms = "
          f"{fixed + passes * per_pass:.0f} s (budget 600 s). The two projections bracket the split's time when "
          f"the measured batches were emptier than its full ones of 64: by tokens it assumes no pass gets fuller "
          f"(an upper bound), by passes that a fuller pass costs no more (a lower bound)", flush=True)


def check_vocab(val_dir: Path, vocab: int, tokenizer: str) -> None:
    from pgolf.shard_format import load_tokens, shard_paths

    top = int(load_tokens(shard_paths(val_dir)).max())
    if top >= vocab:
        raise SystemExit(f"{val_dir}: token id {top} >= the vocabulary of {tokenizer} ({vocab}); pass the "
                         f"shards' own tokenizer with --tokenizer")


def report(r: dict) -> None:
    """The stage's seconds, the scoring loop's rate per rank, and the 8-GPU projection (assumption stated)."""
    ranks, tokens = r["world_size"], r["scored_tokens"]
    warm_up = r.get("warmup_seconds", 0.0)
    rate = tokens / r["scoring_seconds"] / ranks  # per rank: each rank scored about tokens / ranks
    fixed = r["eval_seconds"] - r["scoring_seconds"]  # load, warm-up/compile, all-reduce: paid once
    projected = fixed + CHALLENGE_VAL_TOKENS / (rate * CHALLENGE_GPUS)
    how = "TTT" if "ttt" in r else f"stride {r['stride']}"
    untimed = [p for p in r.get("ttt", {}).get("ttt_phase_docs", []) if p >= r.get("scored_docs", 0)]
    print(f"eval {ranks} rank(s) on {r['device']}: {tokens:,} tokens (seq {r['seq_len']}, {how}); whole stage "
          f"{r['eval_seconds']:.1f} s = warm-up/compile {warm_up:.1f} s + scoring {r['scoring_seconds']:.1f} s + "
          f"other {fixed - warm_up:.1f} s; scoring {rate:,.0f} tokens/s per rank", flush=True)
    print(f"projection: the challenge's {CHALLENGE_VAL_TOKENS:,} tokens on {CHALLENGE_GPUS} GPUs = {fixed:.1f} s fixed "
          f"+ {CHALLENGE_VAL_TOKENS:,} / ({rate:,.0f} x {CHALLENGE_GPUS}) tokens/s = {projected:.0f} s (budget 600 s; "
          f"assumes the scoring rate scales with the ranks and these documents' lengths are the split's)", flush=True)
    if "compiled_graphs" in r:
        print(f"compiled graphs: {r['compiled_graphs']['warm_up']} in the warm-up, {r['compiled_graphs']['scoring']} "
              f"while scoring (0 expected)", flush=True)
    if untimed:
        print(f"not timed: the global phases after {untimed} documents (only {r['scored_docs']} here)", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
