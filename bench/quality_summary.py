#!/usr/bin/env python3
"""Summarise bench/quality_side_by_side.sh: per-seed val_bpb of the reference and pgolf, and the test.

    python3 bench/quality_summary.py OUTDIR        # reads ref_s*.log and pgolf_s*/quality.json

Pairs of comparable scores (the record's log line → pgolf's score):
  pre-quantization post-ema  → prequant_full      (EMA weights, non-overlapping 2048 windows)
  quantized                  → quantized_full     (dequantized artifact, same windows)
  quantized_sliding_window   → quantized_sliding  (stride 64: the leaderboard's number)
"No worse beyond seed noise": the one-sided Welch p-value that pgolf's mean is higher (worse) than the
reference's; below 0.05 it says WORSE.

TTT gain (when OUTDIR has ref0611_s*.log and pgolf quality.json files with quantized_ttt): per seed,
post-TTT minus post-quantization val_bpb on non-overlapping 2048-token windows, for the 1.0611 record
(quantized_ttt_phased − diagnostic quantized; bench/ref0611_scores.py) and for pgolf (quantized_ttt −
quantized_full: the same windows, so the context TTT's chunked scoring adds counts in both gains).
Tests on the gains: the practised rule's one-sided Welch (p < 0.25: pgolf's TTT gains more) and the
p that pgolf's gains less (below 0.05: WORSE). The strict rule is on val_loss in nats per token, and
the two sides' tokens differ (CaseOps vs sp8192), so it is not applied. Writes OUTDIR/quality_summary.json.
"""
import json
import re
import sys
from dataclasses import asdict
from pathlib import Path

from ref0611_scores import parse as parse_0611  # bench/ is on sys.path: python puts the script's folder there

from pgolf.stats import PRACTISED_ALPHA, Sample, p_less

PAIRS = {"pre-quantization post-ema": "prequant_full", "quantized": "quantized_full",
         "quantized_sliding_window": "quantized_sliding"}
LINE = re.compile(r"^(pre-quantization post-ema|quantized|quantized_sliding_window) val_loss:(\S+) val_bpb:(\S+)", re.M)


def reference_scores(log: Path) -> dict:
    return {PAIRS[name]: float(bpb) for name, _, bpb in LINE.findall(log.read_text(errors="replace"))}


def ttt_gains(out: Path) -> dict:
    """{side: {seed: post-TTT − post-quantization val_bpb}} of the runs that reached both scores."""
    record = {int(p.stem.split("_s")[1]): parse_0611(p.read_text(errors="replace")).get("ttt_gain_bpb")
              for p in sorted(out.glob("ref0611_s*.log"))}
    pgolf = {}
    for p in sorted(out.glob("pgolf_s*/quality.json")):
        q = json.loads(p.read_text())
        if {"quantized_ttt", "quantized_full"} <= q["scores"].keys():
            pgolf[q["seed"]] = q["scores"]["quantized_ttt"]["val_bpb"] - q["scores"]["quantized_full"]["val_bpb"]
    return {"record_1.0611": {k: v for k, v in record.items() if v is not None}, "pgolf": pgolf}


def compare_gains(gains: dict) -> dict:
    """Mean ± std of each side's gains and the two one-sided Welch tests (NaN under two seeds a side)."""
    r, g = list(gains["record_1.0611"].values()), list(gains["pgolf"].values())
    rs, gs = Sample.of(r) if r else None, Sample.of(g) if g else None
    both = rs is not None and gs is not None
    return {"record_1.0611": asdict(rs) if rs else None, "pgolf": asdict(gs) if gs else None,
            "pgolf_minus_record": gs.mean - rs.mean if both else float("nan"),
            "p_pgolf_gains_more": p_less(gs, rs) if both else float("nan"),  # the practised rule's test
            "p_pgolf_gains_less": p_less(rs, gs) if both else float("nan")}


def print_gains(gains: dict, test: dict) -> None:
    print("TTT gain, post-TTT − post-quantization val_bpb (non-overlapping 2048-token windows):")
    for side in ("record_1.0611", "pgolf"):
        seeds = " ".join(f"s{k} {v:+.4f}" for k, v in sorted(gains[side].items()))
        s = test[side]
        mean = f"mean {s['mean']:+.4f} ± {s['std']:.4f} (n={s['n']})" if s else "–"
        print(f"  {side:14s} {seeds:40s} {mean}")
    more, less = test["p_pgolf_gains_more"], test["p_pgolf_gains_less"]
    verdict = "WORSE" if less < 0.05 else "beats (practised)" if more < PRACTISED_ALPHA else "ok" if less == less else "n/a"
    print(f"  pgolf − record {test['pgolf_minus_record']:+.4f}; p(pgolf gains more) {more:.3f}, "
          f"p(pgolf gains less) {less:.3f}: {verdict}; strict rule: n/a (nats per token of different tokenizers)")


def main(out: Path) -> int:
    ref = {int(p.stem.split("_s")[1]): reference_scores(p) for p in sorted(out.glob("ref_s*.log"))}
    ours = {}
    for p in sorted(out.glob("pgolf_s*/quality.json")):
        q = json.loads(p.read_text())
        ours[q["seed"]] = {k: v["val_bpb"] for k, v in q["scores"].items()}
    rows = {}
    for key in PAIRS.values():
        r = [s[key] for s in ref.values() if key in s]
        g = [s[key] for s in ours.values() if key in s]
        if not r and not g:
            continue
        rs, gs = Sample.of(r) if r else None, Sample.of(g) if g else None
        p_worse = p_less(rs, gs) if rs and gs else float("nan")  # H1: reference < pgolf
        rows[key] = {"reference": r, "pgolf": g, "p_pgolf_worse": p_worse}
        fmt = lambda s: f"{s.mean:.4f} ± {s.std:.4f} (n={s.n})" if s else "–"  # noqa: E731
        verdict = "WORSE" if p_worse < 0.05 else "ok" if p_worse == p_worse else "n/a"
        diff = gs.mean - rs.mean if rs and gs else float("nan")
        rows[key]["pgolf_minus_reference"] = diff
        print(f"{key:18s} reference {fmt(rs):26s} pgolf {fmt(gs):26s} diff {diff:+.4f} "
              f"p(pgolf worse) {p_worse:.3f} {verdict}")
    print("per seed:", json.dumps({"reference": ref, "pgolf": ours}))
    summary = {"per_seed": {"reference": ref, "pgolf": ours}, "comparison": rows}
    gains = ttt_gains(out)
    if gains["record_1.0611"] or gains["pgolf"]:
        summary["ttt_gain"] = {"per_seed": gains, "comparison": compare_gains(gains)}
        print_gains(gains, summary["ttt_gain"]["comparison"])
    (out / "quality_summary.json").write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(Path(sys.argv[1])))
