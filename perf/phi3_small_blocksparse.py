"""Phi-3-small's block-sparse attention against dense causal attention at 8K context, on CPU.

One attention call (batch 1, `--heads` query heads of 128 sharing `--kv-heads` key/value
heads, the published layout: blocks of 64, 16 local blocks, vertical stride 8, the per-head
offset of the first heads) through the kernels phi_lib.model.phi3_small uses:

- dense: SDPA causal (`is_causal`), what the dense layers run;
- sparse, masked SDPA: the CPU path, a (1, heads, T, T) boolean mask from the layout rule;
- sparse, flex attention: the GPU path's BlockMask, run by torch's unfused CPU implementation
  (and, with `--compile`, flex attention compiled for the CPU, which skips unseen blocks).

Reported per kernel: seconds (best of `--rounds` after one warm-up) and the peak resident
memory the call adds (VmHWM after resetting it, minus the resident memory before). Outputs:
the sparse kernels against each other, and against dense on the first 16 x 64 query rows
(where the local window covers every earlier key, so sparse must equal dense).

    python perf/phi3_small_blocksparse.py                 # 8192 tokens, 4 heads, fp32 (~1 min)
    python perf/phi3_small_blocksparse.py --compile       # + compiled flex (minutes to compile)
"""
from __future__ import annotations

import argparse
import os
import time
import warnings
from pathlib import Path

import torch

from phi_lib.model.attention import attend
from phi_lib.model.phi3_small import Phi3SmallConfig, block_mask, dense_mask, sparse_mask_mod


def rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def measure(fn, rounds: int):
    """(best seconds, peak added MiB, output) of `fn()` over `rounds` calls after a warm-up."""
    out = fn()
    del out
    best, peak = float("inf"), 0.0
    for _ in range(rounds):
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        before = rss_kib("VmRSS")
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
        peak = max(peak, (rss_kib("VmHWM") - before) / 1024)
    return best, peak, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seq", type=int, default=8192)
    ap.add_argument("--heads", type=int, default=4, help="query heads (published: 32)")
    ap.add_argument("--kv-heads", type=int, default=1, help="key/value heads (published: 8)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    ap.add_argument("--compile", action="store_true", help="also flex attention compiled for CPU")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")

    # the published layout; the per-head offset is head * max(1, stride // heads): with 8 or
    # fewer heads that is the published 32-head model's offset of its first heads
    config = Phi3SmallConfig.from_preset("phi-3-small", num_attention_heads=args.heads,
                                         num_key_value_heads=args.kv_heads,
                                         hidden_size=128 * args.heads)
    t, d, scale = args.seq, config.head_dim, config.attention_scale
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, args.heads, t, d, generator=g)
    k = torch.randn(1, args.kv_heads, t, d, generator=g)
    v = torch.randn(1, args.kv_heads, t, d, generator=g)
    cpu = torch.device("cpu")
    mask_mod = sparse_mask_mod(config, torch.arange(t)[None], t)

    def masked():
        return attend(q, k, v, dense_mask(mask_mod, 1, args.heads, t, t, cpu), impl="sdpa", scale=scale)

    bm = block_mask(mask_mod, 1, config, t, t, cpu)

    def flex(fn=None):
        from torch.nn.attention.flex_attention import flex_attention

        return (fn or flex_attention)(q, k, v, block_mask=bm, scale=scale,
                                      enable_gqa=args.kv_heads != args.heads)

    kernels = {"dense causal (SDPA is_causal)": lambda: attend(q, k, v, None, impl="sdpa", scale=scale),
               "block-sparse, masked SDPA (CPU path)": masked,
               "block-sparse, flex attention, unfused (GPU path's BlockMask)": flex}
    if args.compile:
        from torch.nn.attention.flex_attention import flex_attention

        compiled = torch.compile(flex_attention, dynamic=False)
        kernels["block-sparse, flex attention, compiled for CPU"] = lambda: flex(compiled)

    visible = dense_mask(mask_mod, 1, args.heads, t, t, cpu).sum().item()
    causal = args.heads * t * (t + 1) // 2
    print(f"# {os.uname().nodename}: torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"load average {os.getloadavg()[0]:.2f} at start")
    print(f"# T={t}, {args.heads} query / {args.kv_heads} kv heads of {d}, fp32; the layout keeps "
          f"{visible / causal:.1%} of the causal (query, key) pairs")
    print("| kernel | seconds | peak added MiB |\n|---|---|---|")
    outs = {}
    for name, fn in kernels.items():
        seconds, mib, outs[name] = measure(fn, args.rounds)
        print(f"| {name} | {seconds:.2f} | {mib:,.0f} |", flush=True)
    names = list(outs)
    dense, sparse = outs[names[0]], outs[names[1]]
    window = config.blocksparse_num_local_blocks * config.blocksparse_block_size
    print(f"\nmax |masked - flex|: {(sparse - outs[names[2]]).abs().max().item():.2e}")
    for name in names[3:]:
        print(f"max |masked - {name}|: {(sparse - outs[name]).abs().max().item():.2e}")
    print(f"max |sparse - dense| on rows < {window} (the local window covers every key): "
          f"{(sparse - dense)[:, :, :window].abs().max().item():.2e}")
    print(f"mean |sparse - dense| on rows >= {window} (keys dropped): "
          f"{(sparse - dense)[:, :, window:].abs().mean().item():.2e}")
    print(f"# load average {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
