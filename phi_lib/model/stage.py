"""Stage 04: build the configured phi architecture and size it, one step per notebook cell:

    stage = ModelStage(cfg, out)
    stage.summary()          # the architecture; writes config.json (the stage's output)
    stage.params()           # parameters by component, checked against the built model
    stage.flops()            # training FLOPs per token
    stage.memory()           # memory per GPU by ZeRO stage and precision
    stage.memory_plot()      # memory.png
    stage.parity()           # max |logit difference| to transformers on shared random weights
    stage.samples()          # greedy continuations by the freshly initialized model
    manifest = stage.write_manifest()

Each step records its stats (phi_lib.stage_base); parity and samples, the steps that take
seconds, are reused while their recorded fingerprint matches. Sizing works on the meta
device (no weights), so the tables of phi-2, phi-3-mini or phi-3-medium take no time or memory. Parity and
the sample generation need real weights: they run on the configured model when it is small,
else on the same architecture shrunk to 2 layers.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch

from phi_lib.io import atomic_write_json
from phi_lib.model.config import PhiConfig
from phi_lib.model.model import PhiForCausalLM
from phi_lib.model.parity import parity_check, shrink
from phi_lib.model.planning import flops_per_token, memory_table, param_count
from phi_lib.provenance import Fingerprint
from phi_lib.stage_base import BaseStage

SAMPLE_MAX_PARAMS = 200_000_000
"""Above this the sample generation uses the shrunk architecture (CPU minutes otherwise)."""
HF_CONFIG = "config.json"
FIGURE = "memory.png"
PARTS = ("embedding", "attention", "mlp", "norms", "lm_head", "total", "non_embedding")


class ModelStage(BaseStage):
    """Stage 04: the phi architecture of `cfg.model`, its size, cost and parity."""

    number = "04"

    def __init__(self, cfg, out: Optional[Path] = None):
        from phi_lib.data.tokenizer import load_tokenizer

        super().__init__(cfg, out)
        self.mc = cfg.model
        self.config = PhiConfig.from_model_config(self.mc)
        self.seq_len = self.mc.plan_seq_len or self.config.max_position_embeddings
        tok = load_tokenizer(cfg.model.tokenizer, data_dir=cfg.run.data_dir)
        if not tok.source.startswith("hub:"):
            self.inputs["tokenizer"] = Path(tok.source)  # the samples are decoded with it

    def build(self, device: str = "meta") -> PhiForCausalLM:
        """The configured model; on the meta device by default (shapes only, instant)."""
        with torch.device(device):
            return PhiForCausalLM(self.config)

    # ------------------------------------------------------------------ steps
    def summary(self):
        """The architecture, one row per field; writes `config.json`, the Hugging Face config
        every checkpoint of stage 05 carries."""
        import pandas as pd

        c = self.config
        rows = {"preset": c.name, "block": "parallel attn+MLP, LayerNorm" if c.arch == "phi"
                else "sequential, RMSNorm, SwiGLU", "layers": c.num_hidden_layers,
                "hidden": c.hidden_size, "heads": c.num_attention_heads,
                "kv heads": c.num_key_value_heads, "head dim": c.head_dim,
                "rotary dim": c.rotary_dim, "mlp": c.intermediate_size, "vocab": c.vocab_size,
                "tokenizer": self.cfg.model.tokenizer,
                "context": c.max_position_embeddings, "activation": c.hidden_act,
                "rotary": c.rope_type if c.rope_type == "default" else
                f"{c.rope_type} (from {c.original_max_position_embeddings})",
                "sliding window": c.sliding_window,
                "dropout (resid/embd/attn)": f"{c.resid_pdrop}/{c.embd_pdrop}/{c.attention_dropout}",
                "attention kernel": c.attn_implementation}
        self.write_config()
        self.record("summary", fingerprint=self.fingerprint,
                    architecture={k: str(v) for k, v in rows.items()})
        return pd.DataFrame({"value": [str(v) for v in rows.values()]}, index=list(rows))

    def params(self):
        """Parameters by component, checked against the model built on the meta device."""
        import pandas as pd

        counts = param_count(self.config)
        built = sum(p.numel() for p in self.build().parameters())
        if built != counts["total"]:
            raise AssertionError(f"param_count says {counts['total']:,}, the model has {built:,}")
        self.record("params", fingerprint=self.fingerprint,
                    counts={f"params/{k}": v for k, v in counts.items()},
                    metrics={"params": counts["total"], "params_non_embedding": counts["non_embedding"]})
        return pd.DataFrame({"parameters": [counts[k] for k in PARTS],
                             "share": [counts[k] / counts["total"] for k in PARTS]},
                            index=list(PARTS)).style.format({"parameters": "{:,}", "share": "{:.1%}"})

    def flops(self) -> dict[str, float]:
        """Training FLOPs per token at the planning sequence length, and per 1B tokens."""
        f = flops_per_token(self.config, self.seq_len)
        self.record("flops", fingerprint=self._planner_fingerprint(), metrics={"flops_per_token": f})
        return {"seq_len": self.seq_len, "flops_per_token": f, "flops_per_1B_tokens": f * 1e9,
                "6N share": 6 * param_count(self.config)["non_embedding"] / f}

    def memory(self):
        """Training memory per GPU (GB) for ZeRO 0-3 x fp16/bf16 on `model.gpus` GPUs."""
        import pandas as pd

        rows = memory_table(self.config, self.mc.gpus, self.mc.plan_micro_batch_size, self.seq_len)
        self.record("memory", fingerprint=self._planner_fingerprint(),
                    metrics={f"memory_gb/zero{r['zero_stage']}": r["total"]
                             for r in rows if r["precision"] == "fp16"})
        return pd.DataFrame(rows).set_index(["zero_stage", "precision"])

    def memory_plot(self):
        """Stacked bars of the memory per GPU by ZeRO stage (fp16; bf16 is the same size)."""
        import matplotlib.pyplot as plt
        import pandas as pd

        rows = memory_table(self.config, self.mc.gpus, self.mc.plan_micro_batch_size, self.seq_len,
                            precisions=("fp16",))
        df = pd.DataFrame(rows).set_index("zero_stage")
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
        self.save_figure(fig, FIGURE)
        return fig

    def parity(self) -> dict[str, Any]:
        """Max |logit difference| to transformers on shared random weights (fp32)."""
        fp = self.fingerprint
        if self.step_current("parity", fp):
            return self.step_stats("parity")["report"]
        with self.timed() as t:
            report = parity_check(self.config)
        self.record("parity", fingerprint=fp, seconds=t["seconds"], report=report,
                    metrics={"parity_max_abs_diff": report["max_abs_diff"],
                             "kv_cache_max_abs_diff": report["kv_cache_max_abs_diff"]})
        return report

    def samples(self):
        """Greedy continuations of `model.sample_prompts` by the freshly initialized model.

        Untrained weights write noise: this shows the generation path (KV cache, padding,
        stop at EOS) end to end; stage 05 trains the model and stage 06 samples it again.
        """
        import pandas as pd

        fp = self._samples_fingerprint()
        if not self.step_current("samples", fp):
            with self.timed() as t:
                rows = self._generate()
            self.record("samples", fingerprint=fp, seconds=t["seconds"], counts={"samples": len(rows)},
                        samples=rows)
        return pd.DataFrame(self.step_stats("samples")["samples"])

    def write_config(self) -> Path:
        """`04_model/config.json`: the Hugging Face config of the configured model."""
        path = self.out / HF_CONFIG
        atomic_write_json(path, self.config.to_hf_dict())
        return path

    def write_manifest(self) -> dict:
        """Every step's stats merged, with `config.json`, the plot and the samples."""
        import matplotlib.pyplot as plt

        self.write_config()
        if FIGURE not in self.figures:
            plt.close(self.memory_plot())
        samples = (self.step_stats("samples") or {}).get("samples", [])
        return super().write_manifest(hf_config=HF_CONFIG, samples=samples)

    # ------------------------------------------------------------------ helpers
    def _planner_fingerprint(self) -> Fingerprint:
        """The stage's fingerprint plus the planner's assumptions (operational for the stage:
        they size a table, they do not change the model)."""
        fp = self.fingerprint
        planner = {"gpus": self.mc.gpus, "micro_batch_size": self.mc.plan_micro_batch_size,
                   "seq_len": self.seq_len}
        return Fingerprint.of(config={**fp.config, "planner": planner}, inputs=fp.inputs)

    def _samples_fingerprint(self) -> Fingerprint:
        from phi_lib.data.tokenizer import tokenizer_identity

        fp = self.fingerprint
        samples = {"prompts": list(self.mc.sample_prompts), "max_new_tokens": self.mc.sample_max_new_tokens}
        return Fingerprint.of(config={**fp.config, "samples": samples}, inputs={
            **fp.inputs, "tokenizer": tokenizer_identity(self.cfg.model.tokenizer, self.cfg.run.data_dir)})

    def _generate(self) -> list[dict[str, Any]]:
        from phi_lib.data.tokenizer import load_tokenizer
        from phi_lib.model.generate import generate_text

        cfg = self.config
        if param_count(cfg)["total"] > SAMPLE_MAX_PARAMS:
            cfg = shrink(cfg, vocab=cfg.vocab_size)
        torch.manual_seed(self.cfg.run.seed)
        model = PhiForCausalLM(cfg).eval()
        tok = load_tokenizer(self.cfg.model.tokenizer, data_dir=self.cfg.run.data_dir)
        if len(tok) > cfg.vocab_size:
            raise ValueError(f"model.vocab_size={cfg.vocab_size} is smaller than the tokenizer "
                             f"{self.cfg.model.tokenizer!r} ({len(tok)} tokens)")
        texts = generate_text(model, tok, self.mc.sample_prompts,
                              max_new_tokens=self.mc.sample_max_new_tokens, temperature=0.0)
        label = f"{cfg.num_hidden_layers} layers" + (" (shrunk)" if cfg is not self.config else "")
        return [{"prompt": p, "completion": t, "model": label}
                for p, t in zip(self.mc.sample_prompts, texts)]
