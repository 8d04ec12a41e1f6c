"""Stage 04: build the configured phi architecture and size it (what notebook 04 calls).

    stage = ModelStage(cfg, out)
    stage.param_table(); stage.memory_table(); stage.parity(); stage.samples()
    stage.write_manifest()

Sizing works on the meta device (no weights), so the tables of phi-2, phi-3-mini or
phi-3-medium take no time or memory. Parity and the sample generation need real weights: they run on the
configured model when it is small, else on the same architecture shrunk to 2 layers.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Optional

import torch

from phi_lib.io import atomic_write_json, save_figure, write_manifest
from phi_lib.model.config import PhiConfig
from phi_lib.model.model import PhiForCausalLM
from phi_lib.model.parity import parity_check, shrink
from phi_lib.model.planning import flops_per_token, memory_table, param_count

SAMPLE_MAX_PARAMS = 200_000_000
"""Above this the sample generation uses the shrunk architecture (CPU minutes otherwise)."""


class ModelStage:
    def __init__(self, cfg, out: Path):
        self.cfg, self.out = cfg, Path(out)
        self.mc = cfg.model
        self.config = PhiConfig.from_model_config(self.mc)
        self.seq_len = self.mc.plan_seq_len or self.config.max_position_embeddings
        self.parity_report: Optional[dict[str, Any]] = None
        self.sample_rows: list[dict[str, Any]] = []
        self.timings: dict[str, float] = {}

    def build(self, device: str = "meta") -> PhiForCausalLM:
        """The configured model; on the meta device by default (shapes only, instant)."""
        with torch.device(device):
            return PhiForCausalLM(self.config)

    def summary(self):
        """The architecture, one row per field."""
        import pandas as pd

        c = self.config
        rows = {"preset": c.name, "block": "parallel attn+MLP, LayerNorm" if c.arch == "phi"
                else "sequential, RMSNorm, SwiGLU", "layers": c.num_hidden_layers,
                "hidden": c.hidden_size, "heads": c.num_attention_heads,
                "kv heads": c.num_key_value_heads, "head dim": c.head_dim,
                "rotary dim": c.rotary_dim, "mlp": c.intermediate_size, "vocab": c.vocab_size,
                "tokenizer": self.mc.tokenizer,
                "context": c.max_position_embeddings, "activation": c.hidden_act,
                "rotary": c.rope_type if c.rope_type == "default" else
                f"{c.rope_type} (from {c.original_max_position_embeddings})",
                "sliding window": c.sliding_window,
                "dropout (resid/embd/attn)": f"{c.resid_pdrop}/{c.embd_pdrop}/{c.attention_dropout}",
                "attention kernel": c.attn_implementation}
        return pd.DataFrame({"value": [str(v) for v in rows.values()]}, index=list(rows))

    def param_table(self):
        """Parameters by component, checked against the model built on the meta device."""
        import pandas as pd

        counts = param_count(self.config)
        built = sum(p.numel() for p in self.build().parameters())
        if built != counts["total"]:
            raise AssertionError(f"param_count says {counts['total']:,}, the model has {built:,}")
        parts = ["embedding", "attention", "mlp", "norms", "lm_head", "total", "non_embedding"]
        return pd.DataFrame({"parameters": [counts[k] for k in parts],
                             "share": [counts[k] / counts["total"] for k in parts]},
                            index=parts).style.format({"parameters": "{:,}", "share": "{:.1%}"})

    def flops(self) -> dict[str, float]:
        """Training FLOPs per token at the planning sequence length, and per 1B tokens."""
        f = flops_per_token(self.config, self.seq_len)
        return {"seq_len": self.seq_len, "flops_per_token": f, "flops_per_1B_tokens": f * 1e9,
                "6N share": 6 * param_count(self.config)["non_embedding"] / f}

    def memory_table(self):
        """Training memory per GPU (GB) for ZeRO 0-3 x fp16/bf16 on `model.gpus` GPUs."""
        import pandas as pd

        rows = memory_table(self.config, self.mc.gpus, self.mc.plan_micro_batch_size, self.seq_len)
        return pd.DataFrame(rows).set_index(["zero_stage", "precision"])

    def memory_plot(self, path: Optional[Path] = None):
        """Stacked bars of the memory per GPU by ZeRO stage (fp16; bf16 is the same size)."""
        import matplotlib.pyplot as plt

        df = self.memory_table().xs("fp16", level="precision")
        parts = ["params", "grads", "optimizer_states", "activations"]
        fig, ax = plt.subplots(figsize=(6, 3.5))
        bottom = [0.0] * len(df)
        for part in parts:
            ax.bar([f"ZeRO-{z}" for z in df.index], df[part], bottom=bottom, label=part)
            bottom = [b + v for b, v in zip(bottom, df[part])]
        for line, name in ((40, "A100-40GB"), (80, "A100/H100-80GB")):
            if max(bottom) > line * 0.5:
                ax.axhline(line, ls="--", lw=0.8, color="gray")
                ax.text(-0.4, line, name, va="bottom", fontsize=8, color="gray")
        ax.set_ylabel("GB per GPU")
        ax.set_title(f"{self.config.name}: {self.mc.gpus} GPU(s), micro batch "
                     f"{self.mc.plan_micro_batch_size} x {self.seq_len} tokens")
        ax.legend(fontsize=8)
        fig.tight_layout()
        if path is not None:
            save_figure(fig, path)
        return fig

    def parity(self) -> dict[str, Any]:
        """Max |logit difference| to transformers on shared random weights (fp32)."""
        t0 = time.time()
        self.parity_report = parity_check(self.config)
        self.timings["parity_s"] = round(time.time() - t0, 2)
        return self.parity_report

    def samples(self):
        """Greedy continuations of `model.sample_prompts` by the freshly initialized model.

        Untrained weights write noise: this shows the generation path (KV cache, padding,
        stop at EOS) end to end; stage 05 trains the model and stage 06 samples it again.
        """
        import pandas as pd

        from phi_lib.data.tokenizer import load_tokenizer
        from phi_lib.model.generate import generate_text

        t0 = time.time()
        cfg = self.config
        if param_count(cfg)["total"] > SAMPLE_MAX_PARAMS:
            cfg = shrink(cfg, vocab=cfg.vocab_size)
        torch.manual_seed(self.cfg.run.seed)
        model = PhiForCausalLM(cfg).eval()
        tok = load_tokenizer(self.mc.tokenizer, data_dir=self.cfg.run.data_dir)
        if len(tok) > cfg.vocab_size:
            raise ValueError(f"model.vocab_size={cfg.vocab_size} is smaller than the tokenizer "
                             f"{self.mc.tokenizer!r} ({len(tok)} tokens)")
        texts = generate_text(model, tok, self.mc.sample_prompts,
                              max_new_tokens=self.mc.sample_max_new_tokens, temperature=0.0)
        self.timings["samples_s"] = round(time.time() - t0, 2)
        self.sample_rows = [{"prompt": p, "completion": t, "model": f"{cfg.num_hidden_layers} layers"
                             + (" (shrunk)" if cfg is not self.config else "")}
                            for p, t in zip(self.mc.sample_prompts, texts)]
        return pd.DataFrame(self.sample_rows)

    def write_config(self) -> Path:
        """`04_model/config.json`: the Hugging Face config of the configured model."""
        path = self.out / "config.json"
        atomic_write_json(path, self.config.to_hf_dict())
        return path

    def write_manifest(self) -> dict:
        self.write_config()
        fig = "memory.png"
        if not (self.out / fig).is_file():
            import matplotlib.pyplot as plt

            plt.close(self.memory_plot(self.out / fig))
        counts = param_count(self.config)
        mem = memory_table(self.config, self.mc.gpus, self.mc.plan_micro_batch_size, self.seq_len,
                           precisions=("fp16",))
        metrics = {"params": counts["total"], "params_non_embedding": counts["non_embedding"],
                   "flops_per_token": flops_per_token(self.config, self.seq_len)}
        metrics.update({f"memory_gb/zero{r['zero_stage']}": r["total"] for r in mem})
        if self.parity_report is not None:
            metrics["parity_max_abs_diff"] = self.parity_report["max_abs_diff"]
            metrics["kv_cache_max_abs_diff"] = self.parity_report["kv_cache_max_abs_diff"]
        counts_out = {f"params/{k}": v for k, v in counts.items()}
        return write_manifest(self.out, self.cfg, "04", metrics=metrics, counts=counts_out,
                              figures=[fig], timings=self.timings,
                              hf_config="config.json", samples=self.sample_rows)
