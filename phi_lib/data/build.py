"""Stage 03 end to end, one step per notebook cell:

    mix = MixBuilder(cfg, out)
    mix.tokenize()       # per-source token caches (multi-process, resumable) -> sources table
    mix.plan()           # tokens and epochs per source for the budget (+ warnings)
    mix.pack()           # train/val windows as shards (uint16/uint32) + index + mix.json
                         # (+ the finetune set `mix.finetune` into finetune/, same format)
    mix.write_manifest() # the stage contract read by the report

Deterministic by `run.seed`: the validation split, each source's epoch permutations and
the interleaving of sources all derive from it. The tokenizer is the model's
(`model.tokenizer`, the preset's by default): a phi-3 run packs phi-3 ids.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Optional

import numpy as np

from phi_lib.config import Config
from phi_lib.data.finetune import FINETUNE_SOURCE, finetune_config, is_mix_source
from phi_lib.data.mixture import MixturePlan, plan_mixture
from phi_lib.data.pack import train_order, val_order, write_split
from phi_lib.data.sources import Source, resolve_source
from phi_lib.data.tokenize import TokenizedSource, tokenize_source
from phi_lib.io import atomic_write_json, write_manifest
from phi_lib.packed import FINETUNE_DIR, MIX_FILE, token_dtype


class MixBuilder:
    """Builds `<run>/03_mix/` from `cfg.mix`.

    `cache_dir` holds the per-source token caches (default `out/tokenized`); the finetune
    set's builder shares its parent's when its source is one of `mix.sources`.
    """

    def __init__(self, cfg: Config, out: Path, progress: bool = True,
                 cache_dir: Optional[Path] = None):
        self.cfg, self.out, self.progress = cfg, Path(out), progress
        self.cache_dir = Path(cache_dir) if cache_dir is not None else self.out / "tokenized"
        self.mc = cfg.mix
        self.tokenizer: str = cfg.model.tokenizer
        """The tokenizer name (`model.tokenizer`, resolved at load)."""
        self.finetune: Optional[MixBuilder] = None
        """The finetune set (`mix.finetune`), packed into `out/finetune/` by `pack()`."""
        if self.mc.finetune.source is not None:
            shared = is_mix_source(cfg)
            self.finetune = MixBuilder(finetune_config(cfg), self.out / FINETUNE_DIR, progress,
                                       cache_dir=self.cache_dir if shared else None)
        self.sources: dict[str, Source] = {}
        self.tokenized: dict[str, TokenizedSource] = {}
        self.train_mask: dict[str, np.ndarray] = {}
        self.val_mask: dict[str, np.ndarray] = {}
        self.mixture: Optional[MixturePlan] = None
        self.mix_info: Optional[dict] = None
        self.timings: dict[str, float] = {}

    # ------------------------------------------------------------------ steps
    def resolve(self) -> dict[str, Source]:
        """Find every source first, so a missing one fails before any work."""
        if not self.mc.sources:
            raise ValueError("mix.sources is empty: name at least one source")
        self.sources = {n: resolve_source(n, s.path, s.hf_dataset, text_field=s.text_field,
                                          run_dir=self.cfg.run_dir, data_dir=self.cfg.run.data_dir)
                        for n, s in self.mc.sources.items()}
        if self.finetune is not None:  # found before any work too
            ft = self.mc.finetune.source
            self.finetune.sources = {ft: self.sources[ft]} if is_mix_source(self.cfg) else {
                FINETUNE_SOURCE: resolve_source(FINETUNE_SOURCE, ft, None, text_field="text",
                                                run_dir=self.cfg.run_dir, key="mix.finetune.source",
                                                data_dir=self.cfg.run.data_dir)}
        return self.sources

    def tokenize(self):
        """Tokenize each source (cached under `tokenized/`); returns the sources table."""
        if not self.sources:
            self.resolve()
        t0 = time.time()
        for name, src in self.sources.items():
            self.tokenized[name] = tokenize_source(
                src, self.cache_dir / name, self.tokenizer, data_dir=self.cfg.run.data_dir,
                num_proc=self.mc.num_proc, batch_docs=self.mc.batch_docs, progress=self.progress)
            ts = self.tokenized[name]
            self.val_mask[name] = ts.is_val(self.cfg.run.seed, self.mc.val_fraction)
            self.train_mask[name] = ~self.val_mask[name]
        self.timings["tokenize_s"] = round(time.time() - t0, 2)
        return self.sources_table()

    def sources_table(self):
        import pandas as pd

        rows = []
        for name, ts in self.tokenized.items():
            tr, va = self.train_mask[name], self.val_mask[name]
            rows.append({"source": name, "where": self.sources[name].describe(),
                         "records": ts.state.get("read_records", 0), "docs": ts.n_docs,
                         "train_docs": int(tr.sum()), "val_docs": int(va.sum()),
                         "train_tokens": int((ts.lengths[tr] + 1).sum()),
                         "val_tokens": int((ts.lengths[va] + 1).sum()),
                         "corrupt": ts.state.get("corrupt", 0), "empty": ts.state.get("empty", 0)})
        return pd.DataFrame(rows).set_index("source")

    def plan(self) -> MixturePlan:
        """Token targets and epochs per source (warns past `max_epochs_warning`)."""
        if not self.tokenized:
            self.tokenize()
        avail = {n: int((ts.lengths[self.train_mask[n]] + 1).sum()) for n, ts in self.tokenized.items()}
        docs = {n: int(self.train_mask[n].sum()) for n in self.tokenized}
        phases = [(p.until_tokens, p.weights) for p in self.mc.phases] or None
        names = [p.name or f"phase {i + 1}" for i, p in enumerate(self.mc.phases)] or None
        self.mixture = plan_mixture(avail, {n: s.weight for n, s in self.mc.sources.items()},
                                    self.mc.total_tokens, phases, phase_names=names,
                                    available_docs=docs, max_epochs_warning=self.mc.max_epochs_warning)
        return self.mixture

    def pack(self):
        """Write the train/val windows, the finetune set if any, then `mix.json`; returns a table
        of the splits (the finetune set's as `finetune/train`, `finetune/val`)."""
        import pandas as pd

        from phi_lib.data.tokenizer import load_tokenizer

        if self.mixture is None:
            self.plan()
        t0 = time.time()
        (self.out / MIX_FILE).unlink(missing_ok=True)  # readers never see a half-rewritten mix
        tok = load_tokenizer(self.tokenizer, data_dir=self.cfg.run.data_dir)
        seed = self.cfg.run.seed
        layout = dict(seq_len=self.mc.seq_len, shard_tokens=self.mc.shard_tokens, eos_id=tok.eos_id,
                      vocab_size=len(tok), progress=self.progress)
        splits = {"train": write_split(self.out / "train", train_order(
            self.mixture, self.tokenized, self.train_mask, seed), self.tokenized,
            max_tokens=self.mc.total_tokens, **layout)}
        if self.mc.val_fraction > 0:
            splits["val"] = write_split(self.out / "val", val_order(list(self.tokenized), self.val_mask, seed),
                                        self.tokenized, **layout)
            if splits["val"].n_windows == 0:
                import warnings

                warnings.warn(f"the validation split has fewer than seq_len={self.mc.seq_len} "
                              "tokens: no validation windows (raise mix.val_fraction)")
        finetune = self.pack_finetune()
        self.timings["pack_s"] = round(time.time() - t0, 2)
        table = self.sources_table()
        self.mix_info = {
            "seq_len": self.mc.seq_len, "dtype": token_dtype(len(tok)).name, "tokenizer": self.tokenizer,
            "eos_id": tok.eos_id, "vocab_size": len(tok), "seed": seed,
            "val_fraction": self.mc.val_fraction,
            "splits": {k: {"n_windows": v.n_windows, "n_tokens": v.n_tokens, "n_docs": v.n_docs,
                           "dropped_tail_tokens": v.dropped_tail_tokens, "shards": v.shards,
                           "phases": v.phases, "tokens_by_source": v.tokens_by_source}
                       for k, v in splits.items()},
            "sources": {n: {**{k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()},
                            "corrupt_examples": self.tokenized[n].state.get("corrupt_examples", [])}
                        for n, row in table.to_dict("index").items()},
            "plan": self.mixture.to_dict(),
        }
        if finetune is not None:
            self.mix_info["finetune"] = self.finetune_summary()
        atomic_write_json(self.out / MIX_FILE, self.mix_info)  # last: marks the mix complete
        rows = pd.DataFrame([{"split": k, "windows": v.n_windows, "tokens": v.n_tokens,
                              "documents": v.n_docs, "shards": len(v.shards),
                              "dropped_tail_tokens": v.dropped_tail_tokens}
                             for k, v in splits.items()]).set_index("split")
        if finetune is None:
            return rows
        return pd.concat([rows, finetune.rename(index=lambda k: f"{FINETUNE_DIR}/{k}")])

    def pack_finetune(self):
        """Pack the finetune set into `out/finetune/` (its own `mix.json`); its splits table, or
        None without a finetune set (a stale folder from an earlier config is removed)."""
        if self.finetune is None:
            shutil.rmtree(self.out / FINETUNE_DIR, ignore_errors=True)
            return None
        if not self.sources:
            self.resolve()
        self.finetune.tokenize()
        self.finetune.plan()
        return self.finetune.pack()

    def finetune_summary(self) -> dict:
        """What `mix.json` records of the finetune set (its own `finetune/mix.json` has all)."""
        ft, info = self.finetune, self.finetune.mix_info
        ((name, usage),) = ft.mixture.sources.items()
        return {"dir": FINETUNE_DIR, "source": self.mc.finetune.source, "name": name,
                "total_tokens": ft.mc.total_tokens, "available_tokens": usage.available_tokens,
                "epochs": round(info["splits"]["train"]["n_tokens"] / max(1, usage.available_tokens), 4),
                "splits": {k: {"n_windows": v["n_windows"], "n_tokens": v["n_tokens"]}
                           for k, v in info["splits"].items()}}

    def samples(self, n: int = 3, split: str = "train", chars: int = 400):
        """The first `n` windows decoded, EOS shown as the tokenizer writes it (a DataFrame)."""
        import pandas as pd

        from phi_lib.data.tokenizer import load_tokenizer
        from phi_lib.packed import PackedDataset

        tok = load_tokenizer(self.tokenizer, data_dir=self.cfg.run.data_dir)
        ds = PackedDataset(self.out, split)
        rows = [{"window": i, "doc_starts": ds.doc_starts(i).tolist(),
                 "text": tok.decode(ds[i].tolist())[:chars]} for i in range(min(n, len(ds)))]
        return pd.DataFrame(rows).set_index("window")

    def write_manifest(self) -> dict:
        if self.mix_info is None:
            raise RuntimeError("pack() first")
        fig = "mixture.png"
        if not (self.out / fig).is_file():
            import matplotlib.pyplot as plt

            plt.close(self.mixture.plot(self.out / fig))
        plan = self.mixture
        metrics = {"total_tokens": plan.total_tokens, "unique_tokens": plan.unique_tokens,
                   "epochs": round(plan.epochs, 4),
                   "train_windows": self.mix_info["splits"]["train"]["n_windows"],
                   "val_windows": self.mix_info["splits"].get("val", {}).get("n_windows", 0)}
        if "finetune" in self.mix_info:
            ft = self.mix_info["finetune"]
            metrics.update({"finetune_windows": ft["splits"]["train"]["n_windows"],
                            "finetune_val_windows": ft["splits"].get("val", {}).get("n_windows", 0),
                            "finetune_epochs": ft["epochs"]})
        realized = self.mix_info["splits"]["train"]["tokens_by_source"]
        packed = max(1, self.mix_info["splits"]["train"]["n_tokens"])
        for n, s in plan.sources.items():  # as written (whole documents), not as planned
            metrics[f"share/{n}"] = round(realized[n] / packed, 4)
            metrics[f"epochs/{n}"] = round(realized[n] / max(1, s.available_tokens), 4)
        counts = {}
        for n, info in self.mix_info["sources"].items():
            counts.update({f"{n}/docs": info["docs"], f"{n}/corrupt": info["corrupt"],
                           f"{n}/empty": info["empty"], f"{n}/val_docs": info["val_docs"]})
        if self.finetune is not None and self.finetune.mix_info is not None:
            (info,) = self.finetune.mix_info["sources"].values()
            counts.update({"finetune/docs": info["docs"], "finetune/corrupt": info["corrupt"],
                           "finetune/empty": info["empty"], "finetune/val_docs": info["val_docs"]})
        return write_manifest(self.out, self.cfg, "03", metrics=metrics, counts=counts,
                              figures=[fig], timings=self.timings, warnings=plan.warnings)
