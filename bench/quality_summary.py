#!/usr/bin/env python3
"""Summarise bench/quality_side_by_side.sh: per-seed val_bpb of the reference and pgolf, and the test.

    python3 bench/quality_summary.py OUTDIR        # reads ref_s*.log and pgolf_s*/quality.json

Pairs of comparable scores (the record's log line → pgolf's score):
  pre-quantization post-ema  → prequant_full      (EMA weights, non-overlapping 2048 windows)
  quantized                  → quantized_full     (dequantized artifact, same windows)
  quantized_sliding_window   → quantized_sliding  (stride 64: the leaderboard's number)
"No worse beyond seed noise": the one-sided Welch p-value that pgolf's mean is higher (worse) than the
reference's; below 0.05 it says WORSE. Writes OUTDIR/quality_summary.json.
"""
import json
import re
import sys
from pathlib import Path

from pgolf.stats import Sample, p_less

PAIRS = {"pre-quantization post-ema": "prequant_full", "quantized": "quantized_full",
         "quantized_sliding_window": "quantized_sliding"}
LINE = re.compile(r"^(pre-quantization post-ema|quantized|quantized_sliding_window) val_loss:(\S+) val_bpb:(\S+)", re.M)


def reference_scores(log: Path) -> dict:
    return {PAIRS[name]: float(bpb) for name, _, bpb in LINE.findall(log.read_text(errors="replace"))}


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
    (out / "quality_summary.json").write_text(json.dumps({"per_seed": {"reference": ref, "pgolf": ours},
                                                         "comparison": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(Path(sys.argv[1])))
