"""Launch the record's train_gpt.py for timing, unchanged, from the git-ignored .ref/ folder.

What this adds around the reference (its own code is imported as-is):
  * SDPA backend flags: the reference's main() turns cuDNN SDPA off and flash on
    (harmless for it: it never calls SDPA, it calls FA3).  Here the shim stands in
    for FA3, so the flags are set from REF_SDPA_BACKEND (default cudnn) and the
    reference's own enable_*_sdp calls are made no-ops.
  * REF_STOP_AFTER_TRAIN=1 (default): stop as soon as train_model() returns (after the
    last step's validation, the peak-memory line and the EMA swap), skipping the
    pre-quant eval recompile, GPTQ (CPU-heavy), brotli and the quantized/sliding evals.
    REF_STOP_AFTER_TRAIN=prequant: also run the pre-quantization eval, stop before GPTQ.
    REF_STOP_AFTER_TRAIN=0: the whole script (it compresses with brotli; without the brotli
    package set COMPRESSOR=lzma).
  * The 1.0611 record's _build_cu_seqlens: its max_seqlen is reported as the segment cap (2048)
    instead of each batch's longest document. FA3 takes max_seqlen as an upper bound (the record's
    training passes train_seq_len the same way), so nothing changes but this: a compiled eval
    (dynamic=False) no longer recompiles for every distinct longest document of its batches.
Usage (cwd = .ref or .ref0611): python3 run_reference.py   |   torchrun --standalone --nproc_per_node=N run_reference.py
"""
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import torch  # noqa: E402

_BACKEND = os.environ.get("REF_SDPA_BACKEND", "cudnn").lower()
_FLAGS = {
    "cudnn": dict(cudnn=True, flash=False, mem_efficient=False, math=False),
    "flash": dict(cudnn=False, flash=True, mem_efficient=False, math=False),
    "efficient": dict(cudnn=False, flash=False, mem_efficient=True, math=False),
    "math": dict(cudnn=False, flash=False, mem_efficient=False, math=True),
}


def _pin_sdpa_flags():
    if _BACKEND not in _FLAGS:
        return  # 'any': leave the reference's own choice
    cb = torch.backends.cuda
    f = _FLAGS[_BACKEND]
    cb.enable_cudnn_sdp(f["cudnn"])
    cb.enable_flash_sdp(f["flash"])
    cb.enable_mem_efficient_sdp(f["mem_efficient"])
    cb.enable_math_sdp(f["math"])

    def _ignored(name):
        def fn(enabled):
            return None
        fn.__name__ = name
        return fn

    for name in ("enable_cudnn_sdp", "enable_flash_sdp", "enable_mem_efficient_sdp", "enable_math_sdp"):
        setattr(cb, name, _ignored(name))


def _bound_max_seqlen(ref):
    build = ref._build_cu_seqlens

    def _build_cu_seqlens(bos_pos, total_len, device, max_doc_len=0, bucket_size=64):
        cu_seqlens, max_seqlen = build(bos_pos, total_len, device, max_doc_len, bucket_size)
        return cu_seqlens, (max_doc_len if max_doc_len > 0 else max_seqlen)
    ref._build_cu_seqlens = _build_cu_seqlens


class _StopAfterTraining(Exception):
    pass


def main():
    _pin_sdpa_flags()
    t0 = time.perf_counter()
    import train_gpt as ref  # the record's script; its main() is guarded by __name__
    import flash_attn_interface as shim
    if hasattr(ref, "_build_cu_seqlens"):  # the 1.0611 record (packed documents)
        _bound_max_seqlen(ref)
    rank0 = int(os.environ.get("RANK", "0")) == 0
    if rank0:
        dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
        print(f"bench:reference torch={torch.__version__} device={dev} shim={shim.SHIM_INFO} "
              f"sdpa_flags=cudnn:{torch.backends.cuda.cudnn_sdp_enabled()} flash:{torch.backends.cuda.flash_sdp_enabled()} "
              f"mem_eff:{torch.backends.cuda.mem_efficient_sdp_enabled()} math:{torch.backends.cuda.math_sdp_enabled()}",
              flush=True)
    stop = os.environ.get("REF_STOP_AFTER_TRAIN", "1")
    # train_and_eval looks these names up in the module's globals, so rebinding them works
    if stop == "1":
        train_model = ref.train_model

        def _train_then_stop(*args, **kwargs):
            train_model(*args, **kwargs)
            raise _StopAfterTraining()
        ref.train_model = _train_then_stop
    elif stop == "prequant":
        def _stop(*args, **kwargs):
            raise _StopAfterTraining()
        ref.serialize = _stop
    elif stop != "0":
        raise SystemExit(f"REF_STOP_AFTER_TRAIN={stop!r}: expected 1, prequant or 0")
    try:
        ref.main()
    except _StopAfterTraining:
        if rank0:
            print(f"bench:stopped_after_training wall_s:{time.perf_counter() - t0:.1f}", flush=True)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
