#!/usr/bin/env python3
"""pgolf's side of the real-text quality comparison: train → GPTQ → compress → eval, one seed.

    python3 bench/quality.py --out OUTDIR/pgolf_s1 --seed 1 [--steps 400] [--batch-tokens 16384]
                             [--data .ref/data_text] [--device cuda] [--set key=yaml ...] [--ttt]

The record's stack from config/challenge.yaml (train, quant, compress, eval sections) on the shards
bench/make_text_shards.py writes; the counterpart of the reference run in bench/quality_side_by_side.sh,
with the same reduced batch, steps, seed and 64 calibration micro-batches. The wall clock is taken out
of the schedule (the warmdown follows steps), as MAX_WALLCLOCK_SECONDS=0 does for the reference.

Four scores on the validation shard, because the record reports pre-quantization and quantized
val_bpb without sliding windows (stride = seq_len) and the quantized one with them (stride 64):
prequant/full, prequant/sliding, quantized/full, quantized/sliding. "quantized" is the model rebuilt
from the compressed blob alone. `--ttt` adds a fifth, quantized/ttt: the same blob scored with the
`ttt` ablation of the config (the record's phased score-first LoRA TTT; `--ttt-set` overrides its eval
keys, e.g. phases scaled to a small validation set), so its gain over quantized/full is TTT's alone
(`--no-sliding` skips the two stride-64 scores, the slow part, when only that gain is wanted).
Writes OUT/quality.json and prints one line per score. Run again on the same OUT, it resumes: a trained
and compressed run (OUT/run/artifact.json) is not trained again (with other training settings it stops
and asks for another OUT), and a score already in quality.json with the same --eval-set (and for the TTT
score the same --ttt-set and resolved ttt_* keys) is kept, so a run cut by a time limit finishes in the next
call (on a GPU machine that kept /tmp).
`--set` / `--eval-set` override train / eval keys (e.g. a tiny model for a CPU smoke run).
"""
import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from run_pgolf_bench import apply_sets, eval_section, link_shards  # bench/ is on sys.path: python puts the script's folder there

from pgolf.config import load_config

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--batch-tokens", type=int, default=16384)
    ap.add_argument("--data", default=str(ROOT / ".ref" / "data_text"), help="DATA_DIR of make_text_shards.py")
    ap.add_argument("--config", default=str(ROOT / "config" / "challenge.yaml"))
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--set", nargs="*", default=[], help="train overrides key=yaml_value")
    ap.add_argument("--eval-set", nargs="*", default=[], help="eval overrides key=yaml_value (CPU smoke runs)")
    ap.add_argument("--no-sliding", action="store_true",
                    help="skip the stride-64 scores (the TTT gain is measured against quantized/full; sliding is the slow part)")
    ap.add_argument("--ttt", action="store_true", help="also score the blob with the config's ttt ablation")
    ap.add_argument("--ttt-set", nargs="*", default=[], help="eval overrides key=yaml_value for the TTT score only")
    a = ap.parse_args()
    from pgolf.evaluate import evaluate_files

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    data = Path(a.data) / "datasets" / "fineweb10B_sp8192"
    tokenizer = Path(a.data) / "tokenizers" / "fineweb_8192_bpe.model"
    train_dir, val_dir = link_shards(data, "train", out / "train_shards"), link_shards(data, "val", out / "val_shards")
    cfg = load_config(a.config)  # the schema's defaults filled in
    train = dict(cfg["train"], nproc=1, device=a.device, grad_accum_steps=8, batch_tokens=a.batch_tokens,
                 max_steps=a.steps, max_wallclock_seconds=1e9, gptq_reserve_seconds=0.0, hessian_batches=64,
                 compile_warmup_steps=3,
                 log_every=10)
    apply_sets(train, a.set, "train")
    apply_sets(cfg["eval"], a.eval_set, "eval")
    ev_ttt = None
    if a.ttt:  # the TTT score's eval section, checked before anything is trained
        ev_ttt = eval_section(cfg, "ttt")
        apply_sets(ev_ttt, a.ttt_set, "eval")
    run = out / "run"
    if (run / "artifact.json").is_file():
        scores = resumed_scores(out, train)
        print(f"pgolf seed {a.seed}: resuming the trained run in {run}", flush=True)
        art = json.loads((run / "artifact.json").read_text())
    else:
        (out / "params.json").write_text(json.dumps(train, indent=1))
        art, scores = train_and_compress(a, cfg, out, train_dir, tokenizer), {}
    trained = json.loads((run / "train.json").read_text())
    result = {"seed": a.seed, "steps": trained["steps"], "batch_tokens": a.batch_tokens,
              "final_train_loss": trained["final_train_loss"], "train_seconds": trained["train_seconds"],
              "artifact": {k: art[k] for k in art if k.endswith("bytes")}, "scores": scores}
    # Full-window scores first, and quality.json rewritten after each: a run cut by its time limit keeps them.
    strides = {"full": cfg["eval"]["seq_len"], "sliding": cfg["eval"]["stride"]}
    if a.no_sliding:
        del strides["sliding"]
    settings = {"eval_set": a.eval_set}
    for name, stride in strides.items():
        for mode, path in (("prequant", run / "model.pt"), ("quantized", run / "model.blob")):
            if scores.get(f"{mode}_{name}", {}).get("settings") == settings:
                continue
            ev = dict(cfg["eval"], stride=stride)
            r = evaluate_files("artifact" if mode == "quantized" else "prequant", path, val_dir, tokenizer, ev,
                               a.device, run / f"eval_{mode}_{name}.json")
            scores[f"{mode}_{name}"] = {"val_loss": r["val_loss"], "val_bpb": r["val_bpb"], "settings": settings}
            print(f"pgolf seed {a.seed} {mode:9s} {name:7s} val_loss {r['val_loss']:.5f} val_bpb {r['val_bpb']:.5f}",
                  flush=True)
            (out / "quality.json").write_text(json.dumps(result, indent=2))
    if not a.ttt:
        return 0
    # The resolved ttt_* keys too: a score made before the config's ttt ablation changed is made again.
    ttt_settings = {"eval_set": a.eval_set, "ttt_set": a.ttt_set,
                    "ttt": {k: v for k, v in sorted(ev_ttt.items()) if k.startswith("ttt_")}}
    if scores.get("quantized_ttt", {}).get("settings") != ttt_settings:
        r = evaluate_files("artifact", run / "model.blob", val_dir, tokenizer, ev_ttt, a.device, run / "eval_quantized_ttt.json")
        scores["quantized_ttt"] = {"val_loss": r["val_loss"], "val_bpb": r["val_bpb"], "eval_seconds": r["eval_seconds"],
                                   "settings": ttt_settings}
        print(f"pgolf seed {a.seed} quantized ttt     val_loss {r['val_loss']:.5f} val_bpb {r['val_bpb']:.5f} "
              f"({r['eval_seconds']:.0f} s)", flush=True)
        (out / "quality.json").write_text(json.dumps(result, indent=2))
    return 0


def resumed_scores(out: Path, train: dict) -> dict:
    """The scores a trained OUT already holds, each with the overrides it was computed with (main computes a
    score again when they differ); a run trained with other settings is refused."""
    if json.loads((out / "params.json").read_text()) != train:
        raise SystemExit(f"{out} holds a run trained with other settings ({out / 'params.json'}): use another --out")
    return json.loads((out / "quality.json").read_text())["scores"] if (out / "quality.json").is_file() else {}


def train_and_compress(a, cfg: dict, out: Path, train_dir: Path, tokenizer: Path) -> dict:
    """Train (a subprocess, as the train rule runs it), then GPTQ and compress; artifact.json's summary."""
    from pgolf.artifact import compress_artifact
    from pgolf.gptq import quantize_model

    run = out / "run"
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=str(ROOT), TQDM_DISABLE="1")
    with open(out / "train_stdout.log", "w") as log:
        subprocess.run([sys.executable, "-m", "pgolf.train", "--config", str(out / "params.json"), "--train-dir",
                        str(train_dir), "--tokenizer", str(tokenizer), "--out-dir", str(run), "--seed", str(a.seed)],
                       env=env, stdout=log, stderr=subprocess.STDOUT, check=True)
    t = time.perf_counter()
    quantize_model(run / "model.pt", run / "hessians.pt", cfg["quant"], run / "quant.bin", run / "quant.json")
    art = compress_artifact(run / "quant.bin", cfg["compress"], run / "model.blob", run / "code.py",
                            run / "artifact.json")
    print(f"pgolf seed {a.seed}: GPTQ + compression in {time.perf_counter() - t:.1f}s", flush=True)
    return art


if __name__ == "__main__":
    raise SystemExit(main())
