"""Stage 03 end to end, one step per notebook cell:

    mix = MixBuilder(cfg, out)   # resolves every source first (a missing one fails here)
    mix.tokenize()               # per-source token caches (multi-process, resumable) -> sources table
    mix.plan()                   # tokens and epochs per source for the budget (+ warnings)
    mix.plot()                   # mixture.png
    mix.pack()                   # train/val windows as shards (uint16/uint32) + index + mix.json
                                 # (+ the finetune set `mix.finetune` into finetune/, same format)
    mix.samples()                # the first windows decoded
    mix.write_manifest()         # every step's stats merged: the stage contract

Steps share nothing in memory: each reads what the earlier ones wrote (the token caches under
`.cache/tokenized/`, the plan in `.steps/plan.json`) and records its stats with
`BaseStage.record`. Deterministic by `run.seed`: the validation split, each source's epoch
permutations and the interleaving of sources all derive from it.

Provenance (phi_lib.provenance): a token cache is keyed by its source's file contents, text
field, tokenizer files and EOS rule (phi_lib.data.tokenize); the packed splits, their
`index.json` and `mix.json` carry the stage's *data fingerprint*: the result-affecting `mix`
and `run` fields, the upstream stages' outputs digests and every token cache's key. A pack
whose fingerprint still matches is reused; any other is rewritten, its old shards removed
first. The operational knobs (`num_proc`, `batch_docs`, `shard_tokens`, `max_epochs_warning`)
are in no fingerprint: the windows a reader sees do not depend on them.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Optional

import numpy as np

from phi_lib.config import Config
from phi_lib.image_text import IMAGE_TEXT_DIR
from phi_lib.data.finetune import FINETUNE_SOURCE, finetune_config, is_mix_source
from phi_lib.data.mixture import MixturePlan, plan_mixture
from phi_lib.data.pack import train_order, val_order, write_split
from phi_lib.data.sources import Source, resolve_source
from phi_lib.data.tokenize import TokenizedSource, cache_fingerprint, tokenize_source
from phi_lib.io import atomic_write_json, read_json
from phi_lib.packed import FINETUNE_DIR, INDEX_FILE, MIX_FILE, token_dtype
from phi_lib.provenance import Fingerprint
from phi_lib.stage_base import BaseStage

CACHE_DIR = Path(".cache") / "tokenized"
"""Token caches, under the stage folder (keyed by content, so `--force` keeps them)."""
FINETUNE_CACHE_DIR = Path(".cache") / "finetune-tokenized"
"""Token cache of a finetune set given as a path (a name in `mix.sources` shares the mixture's)."""
FIGURE = "mixture.png"


class Mixture:
    """One packed mixture: its sources, their token caches and its splits (the stage's mixture,
    or the finetune set packed into `finetune/` with the config `finetune_config` rewrites)."""

    def __init__(self, cfg: Config, folder: Path, cache_dir: Path, sources: dict[str, Source],
                 progress: bool = True):
        self.cfg, self.mc, self.folder, self.cache_dir = cfg, cfg.mix, Path(folder), Path(cache_dir)
        self.sources, self.progress = sources, progress

    def cache_keys(self) -> dict[str, str]:
        """Each source's token-cache key (content of its files, tokenizer, text field, EOS rule)."""
        return {n: cache_fingerprint(s, self.cfg.model.tokenizer, self.cfg.run.data_dir).key
                for n, s in self.sources.items()}

    def tokenize(self) -> dict[str, TokenizedSource]:
        """Tokenize every source into its cache (reusing or resuming it); memory-mapped."""
        return {n: tokenize_source(s, self.cache_dir / n, self.cfg.model.tokenizer, data_dir=self.cfg.run.data_dir,
                                   num_proc=self.mc.num_proc, batch_docs=self.mc.batch_docs,
                                   progress=self.progress)
                for n, s in self.sources.items()}

    def masks(self, tokenized: dict[str, TokenizedSource]) -> tuple[dict, dict]:
        """(train, val) document masks per source: the seeded, content-based validation draw."""
        val = {n: ts.is_val(self.cfg.run.seed, self.mc.val_fraction) for n, ts in tokenized.items()}
        return {n: ~m for n, m in val.items()}, val

    def table(self, tokenized: dict[str, TokenizedSource]):
        import pandas as pd

        train, val = self.masks(tokenized)
        rows = [{"source": n, "where": self.sources[n].describe(),
                 "records": ts.state.get("read_records", 0), "docs": ts.n_docs,
                 "train_docs": int(train[n].sum()), "val_docs": int(val[n].sum()),
                 "train_tokens": int((ts.lengths[train[n]] + 1).sum()),
                 "val_tokens": int((ts.lengths[val[n]] + 1).sum()),
                 "corrupt": ts.state.get("corrupt", 0), "empty": ts.state.get("empty", 0)}
                for n, ts in tokenized.items()]
        return pd.DataFrame(rows).set_index("source")

    def plan(self, tokenized: dict[str, TokenizedSource]) -> MixturePlan:
        train, _ = self.masks(tokenized)
        avail = {n: int((ts.lengths[train[n]] + 1).sum()) for n, ts in tokenized.items()}
        docs = {n: int(train[n].sum()) for n in tokenized}
        phases = [(p.until_tokens, p.weights) for p in self.mc.phases] or None
        names = [p.name or f"phase {i + 1}" for i, p in enumerate(self.mc.phases)] or None
        return plan_mixture(avail, {n: s.weight for n, s in self.mc.sources.items()},
                            self.mc.total_tokens, phases, phase_names=names,
                            available_docs=docs, max_epochs_warning=self.mc.max_epochs_warning)

    def pack(self, tokenized: dict[str, TokenizedSource], plan: MixturePlan, fingerprint: dict,
             eos_id: int, vocab_size: int, extra: Optional[dict] = None) -> dict:
        """Write the splits, then `mix.json` (last: it marks the folder complete); its content."""
        (self.folder / MIX_FILE).unlink(missing_ok=True)  # readers never see a half-rewritten mix
        train, val = self.masks(tokenized)
        seed, mc = self.cfg.run.seed, self.mc
        common = dict(seq_len=mc.seq_len, shard_tokens=mc.shard_tokens, eos_id=eos_id,
                      vocab_size=vocab_size,
                      progress=self.progress, fingerprint=fingerprint)
        splits = {"train": write_split(self.folder / "train", train_order(plan, tokenized, train, seed),
                                       tokenized, max_tokens=mc.total_tokens, **common)}
        if mc.val_fraction > 0:
            splits["val"] = write_split(self.folder / "val", val_order(list(tokenized), val, seed),
                                        tokenized, **common)
            if splits["val"].n_windows == 0:
                import warnings

                warnings.warn(f"the validation split has fewer than seq_len={mc.seq_len} "
                              "tokens: no validation windows (raise mix.val_fraction)")
        else:
            shutil.rmtree(self.folder / "val", ignore_errors=True)  # an earlier config's split
        table = self.table(tokenized)
        info = {
            "seq_len": mc.seq_len, "dtype": token_dtype(vocab_size).name, "tokenizer": self.cfg.model.tokenizer,
            "eos_id": eos_id, "vocab_size": vocab_size, "seed": seed, "val_fraction": mc.val_fraction,
            "splits": {k: {"n_windows": v.n_windows, "n_tokens": v.n_tokens, "n_docs": v.n_docs,
                           "dropped_tail_tokens": v.dropped_tail_tokens, "phases": v.phases,
                           "tokens_by_source": v.tokens_by_source, "content_digest": v.content_digest}
                       for k, v in splits.items()},
            "sources": {n: {**{k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()},
                            "corrupt_examples": tokenized[n].state.get("corrupt_examples", [])}
                        for n, row in table.to_dict("index").items()},
            "plan": plan.to_dict(), **(extra or {}), "fingerprint": fingerprint}
        atomic_write_json(self.folder / MIX_FILE, info)
        return info

    def is_packed(self, key: str) -> bool:
        """Whether the folder holds a complete pack carrying fingerprint `key`."""
        info = _read(self.folder / MIX_FILE)
        if info is None or (info.get("fingerprint") or {}).get("key") != key:
            return False
        for split in info["splits"]:
            index = _read(self.folder / split / INDEX_FILE)
            if index is None or (index.get("fingerprint") or {}).get("key") != key or not all(
                    (self.folder / split / s).is_file() for s in index["shards"]):
                return False
        return True


class MixBuilder(BaseStage):
    """Stage 03: builds `<run>/03_mix/` from `cfg.mix` (see the module docstring)."""

    number = "03"

    def __init__(self, cfg: Config, out: Optional[Path] = None, progress: bool = True):
        super().__init__(cfg, out)
        self.mc, self.progress = cfg.mix, progress
        self.mixtures: dict[str, Mixture] = {}
        """`main` (the mixture in `out/`) and, with `mix.finetune.source`, `finetune`."""
        self._image_text_key: Optional[str] = None
        self.resolve()

    # ------------------------------------------------------------------ sources
    def resolve(self) -> dict[str, Source]:
        """Find every source first (a missing one fails before any work); register the data
        files read (corpora, local datasets, the tokenizer) as the stage's inputs."""
        from phi_lib.data.tokenizer import load_tokenizer

        if not self.mc.sources:
            raise ValueError("mix.sources is empty: name at least one source")
        run_dir, data_dir = self.cfg.run_dir, self.cfg.run.data_dir
        sources = {n: resolve_source(n, s.path, s.hf_dataset, text_field=s.text_field,
                                     run_dir=run_dir, data_dir=data_dir)
                   for n, s in self.mc.sources.items()}
        cache = self.out / CACHE_DIR
        self.mixtures = {"main": Mixture(self.cfg, self.out, cache, sources, self.progress)}
        ft = self.mc.finetune.source
        if ft is not None:
            if is_mix_source(self.cfg):  # the mixture's source: its cache and validation split
                ft_sources = {ft: sources[ft]}
            else:
                cache = self.out / FINETUNE_CACHE_DIR
                ft_sources = {FINETUNE_SOURCE: resolve_source(
                    FINETUNE_SOURCE, ft, None, text_field="text", run_dir=run_dir,
                    key="mix.finetune.source", data_dir=data_dir)}
            self.mixtures["finetune"] = Mixture(finetune_config(self.cfg), self.out / FINETUNE_DIR,
                                                cache, ft_sources, self.progress)
        covered = {u for u in self.spec.upstream if u in self.cfg.run.stages}
        for label, m in self.mixtures.items():
            for n, src in m.sources.items():
                # a stage output read here is covered by that stage's outputs digest
                path = src.input_path() if src.stage_dir is None or src.stage_dir.name[:2] in covered \
                    else src.path
                if path is not None:
                    self.inputs[n if label == "main" else f"finetune/{n}"] = path
        tok = load_tokenizer(self.cfg.model.tokenizer, data_dir=data_dir)
        if not tok.source.startswith("hub:"):
            self.inputs["tokenizer"] = Path(tok.source)
        if self.mc.image_text.sources:
            from phi_lib.data.image_text import source_paths

            self.inputs.update({f"image_text/{p.name}": p for p in source_paths(self.cfg)})
        return sources

    @property
    def sources(self) -> dict[str, Source]:
        return self.mixtures["main"].sources

    @property
    def finetune(self) -> Optional[Mixture]:
        return self.mixtures.get("finetune")

    def cache_keys(self) -> dict[str, str]:
        """`{<mixture>/<source>: token-cache key}` of every source."""
        return {f"{label}/{n}": k for label, m in self.mixtures.items() for n, k in m.cache_keys().items()}

    def data_fingerprint(self) -> Fingerprint:
        """What the plan and the packed splits are a function of: the stage's fingerprint
        (result-affecting `run`/`mix` fields, upstream outputs) plus every token cache's key."""
        fp = self.fingerprint
        caches = {f"tokens/{k}": v for k, v in self.cache_keys().items()}
        if self.mc.image_text.sources:  # the records' files and the images they name
            from phi_lib.data.image_text import content_key

            if self._image_text_key is None:
                self._image_text_key = content_key(self.cfg)
            caches["image_text"] = self._image_text_key
        return Fingerprint.of(config=fp.config, inputs={**fp.inputs, **caches})

    # ------------------------------------------------------------------ steps
    def tokenize(self):
        """Tokenize each source (cached under `.cache/tokenized/`); returns the sources table."""
        for legacy in (self.out / "tokenized", self.out / FINETUNE_DIR / "tokenized"):
            shutil.rmtree(legacy, ignore_errors=True)  # caches moved under .cache/
        counts, drops = {}, {"corrupt_record": 0, "empty_text": 0}
        with self.timed() as t:
            for label, m in self.mixtures.items():
                for n, ts in m.tokenize().items():
                    prefix = f"{n}/" if label == "main" else "finetune/"
                    st = ts.state
                    counts.update({f"{prefix}records": st.get("read_records", 0),
                                   f"{prefix}docs": ts.n_docs, f"{prefix}tokens": int(ts.lengths.sum()),
                                   f"{prefix}corrupt": st.get("corrupt", 0),
                                   f"{prefix}empty": st.get("empty", 0)})
                    if label == "main" or not is_mix_source(self.cfg):  # count each source once
                        drops["corrupt_record"] += st.get("corrupt", 0)
                        drops["empty_text"] += st.get("empty", 0)
        self.record("tokenize", fingerprint=Fingerprint.of(inputs=self.cache_keys()), counts=counts,
                    drops=drops, seconds=t["seconds"])
        return self.sources_table()

    def sources_table(self):
        """One row per source: records, documents, train/val documents and tokens, corrupt, empty."""
        return self.mixtures["main"].table(self._tokenized("main"))

    def masks(self, label: str = "main") -> tuple[dict, dict]:
        """(train, val) document masks per source of a mixture."""
        m = self.mixtures[label]
        return m.masks(self._tokenized(label))

    def plan(self) -> MixturePlan:
        """Token targets and epochs per source (warns past `max_epochs_warning`); the
        mixture's plan (the finetune set's is recorded beside it)."""
        with self.timed() as t:
            plans = {label: m.plan(self._tokenized(label)) for label, m in self.mixtures.items()}
        main = plans["main"]
        counts = {}
        for n, row in self.sources_table().iterrows():
            counts.update({f"{n}/train_docs": int(row["train_docs"]), f"{n}/val_docs": int(row["val_docs"])})
        if self.finetune is not None:
            (row,) = [r for _, r in self.finetune.table(self._tokenized("finetune")).iterrows()]
            counts.update({"finetune/train_docs": int(row["train_docs"]),
                           "finetune/val_docs": int(row["val_docs"])})
        self.record("plan", fingerprint=self.data_fingerprint(), counts=counts,
                    metrics={"total_tokens": main.total_tokens, "unique_tokens": main.unique_tokens,
                             "epochs": round(main.epochs, 4)},
                    seconds=t["seconds"], plans={k: p.to_dict() for k, p in plans.items()},
                    warnings=main.warnings)
        return main

    def plot(self):
        """The mixture plot (tokens per source, unique vs repeated; the phase schedule)."""
        fig = self._plans()["main"].plot()
        self.save_figure(fig, FIGURE)
        return fig

    def pack(self):
        """Write the train/val windows, the finetune set if any, then `mix.json` (reused when
        they carry the current fingerprint); returns a table of the splits (the finetune set's
        as `finetune/train`, `finetune/val`)."""
        from phi_lib.data.tokenizer import load_tokenizer

        fp = self.data_fingerprint()
        if self.step_current("pack", fp) and self._is_packed(fp.key):
            return self.splits_table()
        plans = self._plans()
        tok = load_tokenizer(self.cfg.model.tokenizer, data_dir=self.cfg.run.data_dir)
        (self.out / MIX_FILE).unlink(missing_ok=True)  # not complete until rewritten below
        with self.timed() as t:
            extra = {}
            if self.finetune is None:
                shutil.rmtree(self.out / FINETUNE_DIR, ignore_errors=True)  # an earlier config's
            else:
                ft = self.finetune.pack(self._tokenized("finetune"), plans["finetune"], fp.to_dict(),
                                        tok.eos_id, len(tok))
                extra["finetune"] = self._finetune_summary(ft, plans["finetune"])
            counts, drops = {}, {}
            if self.mc.image_text.sources:  # before mix.json, which marks the folder complete
                from phi_lib.data.image_text import build_image_text

                index = build_image_text(self.cfg, self.out, fp.to_dict())
                counts = {f"image_text/{k}": v for k, v in index["counts"].items()}
                drops = {f"image_text/{k}": v for k, v in index["drops"].items()}
                extra["image_text"] = {k: index[k] for k in ("num_crops", "counts", "drops")}
            else:
                shutil.rmtree(self.out / IMAGE_TEXT_DIR, ignore_errors=True)  # an earlier config's
            info = self.mixtures["main"].pack(self._tokenized("main"), plans["main"], fp.to_dict(),
                                              tok.eos_id, len(tok), extra)
        self.record("pack", fingerprint=fp, metrics=self._pack_metrics(info, plans["main"]),
                    counts={**{f"{k}_windows": v["n_windows"] for k, v in info["splits"].items()},
                            **counts}, drops=drops, seconds=t["seconds"])
        return self.splits_table()

    def samples(self, n: int = 3, split: str = "train", chars: int = 400):
        """The first `n` windows decoded, EOS shown as the tokenizer writes it (a DataFrame)."""
        import pandas as pd

        from phi_lib.data.tokenizer import load_tokenizer
        from phi_lib.packed import PackedDataset

        tok = load_tokenizer(self.cfg.model.tokenizer, data_dir=self.cfg.run.data_dir)
        ds = PackedDataset(self.out, split)
        rows = [{"window": i, "doc_starts": ds.doc_starts(i).tolist(),
                 "text": tok.decode(ds[i].tolist())[:chars]} for i in range(min(n, len(ds)))]
        return pd.DataFrame(rows).set_index("window")

    def write_manifest(self) -> dict:
        """The stage contract: every step's stats merged, the plot, the plan's warnings."""
        if not self._is_packed(self.data_fingerprint().key):
            raise RuntimeError(f"{self.out}: no current pack: run pack() first")
        if FIGURE not in self.figures:
            import matplotlib.pyplot as plt

            plt.close(self.plot())
        return super().write_manifest(warnings=(self.step_stats("plan") or {}).get("warnings", []))

    # ------------------------------------------------------------------ reading back
    @property
    def mix_info(self) -> Optional[dict]:
        """`mix.json` as written by the last pack, or None."""
        return _read(self.out / MIX_FILE)

    def splits_table(self):
        """One row per packed split (`finetune/<split>` for the finetune set's), from `mix.json`."""
        import pandas as pd

        rows = []
        for label, m in self.mixtures.items():
            for k, v in read_json(m.folder / MIX_FILE)["splits"].items():
                shards = read_json(m.folder / k / INDEX_FILE)["shards"]
                rows.append({"split": k if label == "main" else f"{FINETUNE_DIR}/{k}",
                             "windows": v["n_windows"], "tokens": v["n_tokens"], "documents": v["n_docs"],
                             "shards": len(shards), "dropped_tail_tokens": v["dropped_tail_tokens"]})
        return pd.DataFrame(rows).set_index("split")

    def _is_packed(self, key: str) -> bool:
        """Every mixture and the image-text set (if configured) written with fingerprint `key`."""
        from phi_lib.data.image_text import is_current

        return all(m.is_packed(key) for m in self.mixtures.values()) and (
            not self.mc.image_text.sources or is_current(self.out, key))

    def _tokenized(self, label: str) -> dict[str, TokenizedSource]:
        """A mixture's token caches, tokenizing first unless every one is complete and current."""
        m = self.mixtures[label]
        if not all(_cache_done(m.cache_dir / n, k) for n, k in m.cache_keys().items()):
            self.tokenize()
        return {n: TokenizedSource.open(n, m.cache_dir / n) for n in m.sources}

    def _plans(self) -> dict[str, MixturePlan]:
        """The plans the plan step recorded (planning first unless it is current)."""
        if not self.step_current("plan", self.data_fingerprint()):
            self.plan()
        return {k: MixturePlan.from_dict(d) for k, d in self.step_stats("plan")["plans"].items()}

    def _finetune_summary(self, info: dict, plan: MixturePlan) -> dict:
        """What `mix.json` records of the finetune set (its own `finetune/mix.json` has all)."""
        ((name, usage),) = plan.sources.items()
        return {"dir": FINETUNE_DIR, "source": self.mc.finetune.source, "name": name,
                "total_tokens": plan.total_tokens, "available_tokens": usage.available_tokens,
                "epochs": round(info["splits"]["train"]["n_tokens"] / max(1, usage.available_tokens), 4),
                "splits": {k: {"n_windows": v["n_windows"], "n_tokens": v["n_tokens"],
                               "content_digest": v["content_digest"]}
                           for k, v in info["splits"].items()}}

    @staticmethod
    def _pack_metrics(info: dict, plan: MixturePlan) -> dict:
        """Windows, and each source's share and epochs as written (whole documents), not as planned."""
        train = info["splits"]["train"]
        metrics = {"train_windows": train["n_windows"],
                   "val_windows": info["splits"].get("val", {}).get("n_windows", 0)}
        if "finetune" in info:
            ft = info["finetune"]
            metrics.update({"finetune_windows": ft["splits"]["train"]["n_windows"],
                            "finetune_val_windows": ft["splits"].get("val", {}).get("n_windows", 0),
                            "finetune_epochs": ft["epochs"]})
        packed = max(1, train["n_tokens"])
        for n, s in plan.sources.items():
            metrics[f"share/{n}"] = round(train["tokens_by_source"][n] / packed, 4)
            metrics[f"epochs/{n}"] = round(train["tokens_by_source"][n] / max(1, s.available_tokens), 4)
        return metrics


def _cache_done(folder: Path, key: str) -> bool:
    state = _read(folder / "state.json") or {}
    return bool(state.get("done")) and (state.get("fingerprint") or {}).get("key") == key


def _read(path: Path) -> Optional[dict]:
    try:
        return read_json(path)
    except (OSError, ValueError):
        return None
