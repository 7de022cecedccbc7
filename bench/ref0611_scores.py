#!/usr/bin/env python3
"""Scores of one run of the 1.0611 record's train_gpt.py, read from its log, and its TTT gain.

    python3 bench/ref0611_scores.py LOG [LOG ...] --seed N [--json OUT.json]

The lines read (the record prints them in this order):
  diagnostic pre-quantization post-ema val_loss:L val_bpb:B eval_time:Tms  → prequant_full
  diagnostic quantized val_loss:L val_bpb:B eval_time:Tms                  → quantized_full
  quantized_ttt_phased val_loss:L val_bpb:B eval_time:Tms                  → quantized_ttt
(non-overlapping 2048-token windows, each document attended alone; then the phased score-first LoRA
TTT on the same artifact). ttt_gain_bpb = quantized_ttt − quantized_full, the record's own
"post-TTT minus post-quantization" (1.07254 → 1.05989 on its seed 42: −0.01265).
Keys follow bench/quality.py's quality.json, so bench/quality_summary.py reads both alike.
Several logs are read as one, in order: a training run's, then its TTT_EVAL_ONLY=1 re-run's.
"""
import argparse
import json
import re
import sys
from pathlib import Path

NAMES = {"diagnostic pre-quantization post-ema": "prequant_full", "diagnostic quantized": "quantized_full",
         "quantized_ttt_phased": "quantized_ttt"}
LINE = re.compile(r"^(diagnostic pre-quantization post-ema|diagnostic quantized|quantized_ttt_phased) "
                  r"val_loss:(\S+) val_bpb:(\S+) eval_time:(\d+)ms", re.M)
STEPS = re.compile(r"^(\d+)/(\d+) val_loss:", re.M)
SIZE = re.compile(r"^Total submission size quantized\+\w+: (\d+) bytes", re.M)


def parse(text: str) -> dict:
    """The scores a log holds (a run cut short holds fewer), steps trained and artifact bytes."""
    scores = {NAMES[name]: {"val_loss": float(loss), "val_bpb": float(bpb), "eval_seconds": int(ms) / 1e3}
              for name, loss, bpb, ms in LINE.findall(text)}
    out = {"scores": scores}
    if steps := STEPS.findall(text):
        out["steps"] = int(steps[-1][0])
    if size := SIZE.findall(text):
        out["artifact_bytes"] = int(size[-1])
    if {"quantized_full", "quantized_ttt"} <= scores.keys():
        out["ttt_gain_bpb"] = scores["quantized_ttt"]["val_bpb"] - scores["quantized_full"]["val_bpb"]
        out["ttt_gain_loss"] = scores["quantized_ttt"]["val_loss"] - scores["quantized_full"]["val_loss"]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("logs", nargs="+", metavar="log")
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--json", help="write the result here")
    a = ap.parse_args()
    logs = [Path(log) for log in a.logs]
    if missing := [str(log) for log in logs if not log.is_file()]:
        raise SystemExit(f"{', '.join(missing)}: no such log")
    text = "".join(log.read_text(errors="replace") for log in logs)
    result = {"seed": a.seed, "logs": [str(log) for log in logs], **parse(text)}
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=2))
    print(json.dumps(result))
    return 0 if "ttt_gain_bpb" in result else 1


if __name__ == "__main__":
    sys.exit(main())
