"""Compact progress on the terminal for jobs whose ranks write to a log file.

The launcher reads the ranks' output as it comes, writes all of it to the job's log and passes a short
line to its own stderr, which Snakemake's local executor shows where the user runs it: the train log's
"step ..." lines (loss, step time, ETA) and the eval bar (tqdm's percentage and ETA).
"""
from __future__ import annotations

import re
import sys
import time

# pgolf.train's log line: "step <n>/<max> loss <nats> lr_scale <x> step_ms <ms> tokens_per_s <n> elapsed_s <s>"
# (searched, not matched: rank 0's own tqdm bar on stderr may precede it on the same line)
TRAIN_LINE = re.compile(r"\bstep (\d+)/(\d+) loss (\S+) .*step_ms (\S+) .*elapsed_s (\S+)")
# tqdm's bar as pgolf.evaluate draws it: "eval:  45%|####  | 9/20 [00:03<00:04, 2.9batch/s]", and as
# pgolf.ttt draws it, in scored tokens: "eval:  45%|####  | 189000/420000 [00:30<00:37, 6300.00tok/s]"
EVAL_BAR = re.compile(r"\beval:\s+(\d+)%\|.*\| (\d+)/(\d+) \[[^<]*<([^,\]]*)(?:, *([\d.]+)([A-Za-z]+)/s)?")
UNITS = {"batch": "batches", "tok": "tokens"}
MIN_INTERVAL_SECONDS = 2.0  # at most one line per job this often (eval bars redraw ten times a second)


def _clock(seconds: float) -> str:
    seconds = max(int(seconds), 0)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def train_progress(record: str, budget_seconds: float) -> str | None:
    """'step 50/150 loss 3.2100, 12.3 ms/step, ETA 0:00:01' from a train.log line; the ETA is whichever
    runs out first, the steps left or the wall-clock budget left."""
    m = TRAIN_LINE.search(record)
    if not m:
        return None
    step, max_steps, loss, step_ms, elapsed = int(m[1]), int(m[2]), float(m[3]), float(m[4]), float(m[5])
    eta = min((max_steps - step) * step_ms / 1000, budget_seconds - elapsed)
    return f"step {step}/{max_steps} loss {loss:.4f}, {step_ms:.1f} ms/step, ETA {_clock(eta)}"


def eval_progress(record: str) -> str | None:
    """'eval 45% (9/20 batches), ETA 00:04' from a tqdm redraw; a bar in tokens adds its rate:
    'eval 45% (189000/420000 tokens, 6300 tokens/s), ETA 00:37'."""
    m = EVAL_BAR.search(record)
    if not m:
        return None
    unit = UNITS.get(m[6] or "batch", m[6])
    rate = f", {float(m[5]):.0f} {unit}/s" if m[6] == "tok" else ""
    return f"eval {m[1]}% ({m[2]}/{m[3]} {unit}{rate}), ETA {m[4].strip() or '?'}"


class Reporter:
    """Turns the records of one job's output into throttled terminal lines prefixed by the job's name."""

    def __init__(self, name: str, budget_seconds: float | None, stream=None):
        self.name, self.budget_seconds = name, budget_seconds
        self.stream = stream or sys.stderr
        self.last_at = -MIN_INTERVAL_SECONDS

    def __call__(self, record: str) -> None:
        line = eval_progress(record)
        if line is None and self.budget_seconds is not None:
            line = train_progress(record, self.budget_seconds)
        final = line is not None and (line.startswith("eval 100%") or re.match(r"step (\d+)/\1 ", line))
        now = time.monotonic()
        if line and (final or now - self.last_at >= MIN_INTERVAL_SECONDS):
            self.last_at = now
            print(f"{self.name}: {line}", file=self.stream, flush=True)
