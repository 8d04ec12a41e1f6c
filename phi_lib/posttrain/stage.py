"""Stage 08 as the notebook runs it: one verb per cell, each a step that reads and writes files.

    stage = PosttrainStage(cfg, out)
    stage.prepare_base()      # the model to align, with the tokenizer and chat template it trains with
    stage.sft_data()          # synthetic + files + datasets, mixed by weight -> data/sft.jsonl
    stage.train_sft()         # TRL SFTTrainer (assistant tokens only) -> sft/model/
                              # (a phi-3-vision base: image-text conversations, posttrain/vision.py)
    stage.preference_data()   # file pairs + judged generated pairs -> data/pairs.jsonl
    stage.train_dpo()         # TRL DPOTrainer from the SFT model (its reference) -> dpo/model/
    stage.benchmarks(); stage.mt_bench(); stage.probes()   # base vs SFT vs DPO
    stage.write_results(); stage.write_manifest()

Provenance: each step has a fingerprint (its result-affecting config and the identity of what
it reads: data file digests, the content digest of the model it starts from). A current step
is skipped; a stale artifact is never reused: the SFT or DPO run whose fingerprint differs is
removed and retrained (the log says which keys changed), generated records of another
fingerprint are removed before generating. Training resumes from its last complete checkpoint
after a kill; generated pairs, MT-bench answers and grades resume without duplicates.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Optional

from phi_lib.config import BackendConfig
from phi_lib.io import ReadStats, atomic_open, atomic_write_json, read_json, read_jsonl
from phi_lib.posttrain import chat, launch, measure, mt_bench, pairs, records, sources, synthetic, vision
from phi_lib.provenance import Fingerprint, file_digest, model_identity, paths_digest, results_view
from phi_lib.stage_base import BaseStage

MODELS = {"base": "base/model", "sft": "sft/model", "dpo": "dpo/model"}
"""Where each measured model lives in the stage folder."""
WEIGHT_FILES = ("*.safetensors", "*.index.json", "pytorch_model*.bin", "config.json",
                "generation_config.json")


class PosttrainStage(BaseStage):
    number = "08"

    def __init__(self, cfg, out: Optional[Path] = None, log=print):
        super().__init__(cfg, out)
        self.pc = cfg.posttrain
        self.data = self.out / "data"
        self.log = log

    # ------------------------------------------------------------------ helpers
    def model_dir(self, label: str) -> Path:
        return self.out / MODELS[label]

    def _fp(self, config: dict, inputs: dict) -> Fingerprint:
        return Fingerprint.of(config={"run.seed": self.cfg.run.seed, **config}, inputs=inputs)

    def _base_key(self) -> str:
        stats = self.step_stats("prepare_base")
        if not stats:
            raise RuntimeError("run stage.prepare_base() first (it resolves the chat template)")
        return stats["fingerprint"]["key"]

    def _fits(self, pool: list[dict], drops: records.Drops, phase: str) -> list[dict]:
        """Drop (as `too_long`) what TRL would drop silently: a conversation whose first answer
        starts beyond `sft.max_length`, a pair whose prompt fills `dpo.max_length`."""
        from transformers import AutoTokenizer

        if not pool:
            return pool
        if phase == "sft" and self._vision():
            return vision.fits(pool, drops, self._processor(), self.pc.sft.max_length)
        if phase == "sft":  # a text model cannot learn from images: counted, not dropped silently
            for rec in (r for r in pool if r.get("images")):
                drops.add("needs_vision_model", f"{len(rec['images'])} image(s), but "
                          f"posttrain.base_model={self.pc.base_model!r} is a text model", rec["id"])
            pool = [r for r in pool if not r.get("images")]
        if getattr(self, "_base_tok", None) is None:
            self._base_tok = AutoTokenizer.from_pretrained(self.model_dir("base"))
        tok = self._base_tok
        limit = getattr(self.pc, phase).max_length
        kept = []
        for rec in pool:
            if phase == "sft":
                msgs = rec["messages"]
                prompt = msgs[:next(i for i, m in enumerate(msgs) if m["role"] == "assistant")]
            else:
                prompt = rec["prompt"]
            n = len(tok.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True,
                                            return_dict=False))
            if n >= limit:
                drops.add("too_long", f"{n} prompt tokens >= {phase}.max_length={limit}", rec["id"])
            else:
                kept.append(rec)
        return kept

    def _vision(self) -> bool:
        """Whether the base is a phi-3-vision model (image-text SFT, `phi_lib.posttrain.vision`)."""
        return vision.is_vision_model(self.model_dir("base"))

    def _processor(self):
        if getattr(self, "_proc", None) is None:
            self._proc = vision.processor(self.model_dir("base"), self.cfg.mix.image_text.num_crops)
        return self._proc

    def _vision_inputs(self, rows) -> dict:
        """What a vision SFT result also depends on: the crops per image and the images' content."""
        return {"mix.image_text.num_crops": self.cfg.mix.image_text.num_crops,
                "images": vision.images_digest(rows)}

    def _template(self) -> str:
        stats = self.step_stats("prepare_base")
        if not stats:
            raise RuntimeError("run stage.prepare_base() first (it resolves the chat template)")
        return stats["template"]

    def _backend(self, label_or_dir, batch_size: int = 8) -> BackendConfig:
        model = str(self.model_dir(label_or_dir)) if label_or_dir in MODELS else str(label_or_dir)
        return BackendConfig(kind=self.pc.generation_backend, model=model, batch_size=batch_size,
                             device=self.pc.device, dtype="auto", cache=False)

    # ------------------------------------------------------------------ base model
    def prepare_base(self) -> dict:
        """`base/model/`: the base model's weights (linked, not copied) with the tokenizer and
        training chat template of this run, so every phase and measurement sees one format."""
        from transformers import AutoTokenizer

        from phi_lib.hf_models import resolve_model

        pc = self.pc
        try:
            resolved = resolve_model(pc.base_model, self.cfg.run_dir)
        except FileNotFoundError as e:
            raise FileNotFoundError(f"posttrain.base_model={pc.base_model!r}: {e}; run stage 05 "
                                    "first, or name another model (--set posttrain.base_model=smollm2)") from None
        tok_src = self._tokenizer_source(resolved)
        fp = self._fp({"posttrain": {k: getattr(pc, k) for k in ("base_model", "tokenizer", "chat_template")}},
                      {"base": model_identity(resolved if Path(resolved).exists() else None, resolved),
                       "tokenizer": model_identity(tok_src if Path(tok_src).exists() else None, tok_src)})
        dest = self.model_dir("base")
        is_vision = Path(resolved).is_dir() and vision.is_vision_model(resolved)
        if self.step_current("prepare_base", fp) and (dest / "config.json").is_file():
            if is_vision:  # settings it cannot use stop the stage before any work
                vision.check_settings(pc, self.step_stats("prepare_base")["template"])
            return self.step_stats("prepare_base")
        with self.timed() as t:
            tok = AutoTokenizer.from_pretrained(tok_src)
            name = chat.resolve(tok, pc.chat_template)
            if is_vision:
                vision.check_settings(pc, name)
            chat.install(tok, name)
            tmp = dest.with_name(".model.tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            _link_weights(resolved, tmp)
            tok.save_pretrained(tmp)
            shutil.rmtree(dest, ignore_errors=True)
            tmp.rename(dest)
        return self.record("prepare_base", fingerprint=fp, seconds=t["seconds"], template=name,
                           resolved=str(resolved), tokenizer=str(tok_src),
                           counts={"vocab": len(tok)})

    def _tokenizer_source(self, resolved: str) -> str:
        from phi_lib.paths import data_path

        pc = self.pc
        name = pc.tokenizer or (self.cfg.model.tokenizer if not _has_tokenizer(resolved) else None)
        if name is None:
            return resolved
        found = data_path(f"tokenizers/{name}", self.cfg.run.data_dir)
        return str(found) if found is not None else name  # a path or a hub name

    # ------------------------------------------------------------------ SFT data
    def sft_data(self, progress: bool = True) -> dict:
        """The SFT set: every source's conversations (malformed ones counted by reason), mixed
        by weight into `data/sft.jsonl`."""
        pc, data_dir = self.pc, self.cfg.run.data_dir
        file_inputs = self._register("sft", pc.sft_sources)
        synth_fp = self._synthetic_fp()
        extra = self._vision_inputs(self._source_images(pc.sft_sources)) if self._vision() else {}
        fp = self._fp({"posttrain": {"sft_sources": results_view(pc.sft_sources),
                                     "sft_examples": pc.sft_examples,
                                     "sft.max_length": pc.sft.max_length}},
                      {**file_inputs, "base": self._base_key(), **extra,
                       **({"synthetic": synth_fp.key} if synth_fp else {})})
        target = self.data / "sft.jsonl"
        if self.step_current("sft_data", fp) and target.is_file():
            return self.step_stats("sft_data")
        with self.timed() as t:
            pools, drops, counts = {}, {}, {}
            for name, src in pc.sft_sources.items():
                if src.kind == "synthetic":
                    pools[name], drops[name] = self._synthetic(name, src, synth_fp, progress)
                else:
                    pools[name], drops[name] = self._read_conversations(name, src, data_dir)
                pools[name] = self._fits(pools[name], drops[name], "sft")
                self._require(name, "sft_sources", src, pools[name], drops[name])
            mixed, mix_stats = sources.mix(pools, {k: s.weight for k, s in pc.sft_sources.items()},
                                           pc.sft_examples, self.cfg.run.seed)
            _write_jsonl(target, mixed)
            self._write_drops("sft", drops)
            for name, st in mix_stats.items():
                counts.update({f"sft/{name}/{k}": v for k, v in st.items()})
        return self.record("sft_data", fingerprint=fp, seconds=t["seconds"],
                           counts={"sft_conversations": len(mixed), **counts},
                           drops=_flat_drops("sft", drops), sources=mix_stats)

    def _register(self, kind: str, srcs: dict) -> dict:
        """Digests of the data files of `srcs` (and register them with the runner)."""
        out = {}
        for name, src in srcs.items():
            if src.kind == "file":
                try:
                    files = sources.files(src, self.cfg.run.data_dir)
                except FileNotFoundError as e:  # name the key, not only the path
                    raise type(e)(f"posttrain.{'sft_sources' if kind == 'sft' else 'preference.sources'}"
                                  f".{name}.path: {e}") from None
                for f in files:
                    self.inputs[f"{kind}/{name}/{f.name}"] = f
                out[f"{kind}/{name}"] = paths_digest(files)
            elif src.kind == "hf":
                out[f"{kind}/{name}"] = f"hf:{src.hf_dataset}"
        return out

    def _source_images(self, srcs: dict) -> list[dict]:
        """The images the file sources' records name (as `_read_conversations` resolves them)."""
        out = []
        for src in (s for s in srcs.values() if s.kind == "file"):
            for rec, where in sources.read(src, ReadStats(), self.cfg.run.data_dir):
                if isinstance(rec.get("images"), list):
                    out.append({"images": _image_paths(rec["images"], where, src)})
        return out

    def _synthetic_fp(self) -> Optional[Fingerprint]:
        from phi_lib.hf_models import model_identity as name_identity

        if not any(s.kind == "synthetic" for s in self.pc.sft_sources.values()):
            return None
        sc = self.pc.synthetic
        gen = sc.backend.model if sc.backend.kind != "transformers" else \
            name_identity(sc.backend.model, self.cfg.run_dir)
        return self._fp({"posttrain.synthetic": results_view(sc)}, {"generator": gen})

    def _synthetic(self, name: str, src, fp: Fingerprint, progress: bool):
        from phi_lib.backends import get_backend

        sc = self.pc.synthetic
        n = round(src.weight * self.pc.sft_examples)
        todo = synthetic.specs(sc.categories, n)
        with get_backend(sc.backend, cache_dir=self.out / ".cache" / "requests",
                         run_dir=self.cfg.run_dir, data_dir=self.cfg.run.data_dir) as backend:
            gen = synthetic.ChatSynthesizer(sc, self.data, backend, fp, run_seed=self.cfg.run.seed,
                                            data_dir=self.cfg.run.data_dir)
            kept = gen.run(todo, progress=progress)
        ids = {s["id"] for s in todo}
        drops = records.Drops()
        for rec in synthetic.read_dropped(self.data):
            if rec["id"] in ids:
                drops.add(rec["drop_reason"], rec.get("drop_detail", ""), f"synthetic/{rec['id']}")
        pool = [{"id": f"{name}/{r['id']}", "source": name, "messages": r["messages"]} for r in kept]
        return pool, drops

    def _read_conversations(self, name: str, src, data_dir):
        stats, drops, pool = ReadStats(), records.Drops(), []
        for rec, where in sources.read(src, stats, data_dir):
            images = rec.get("images")
            if images is not None and not isinstance(images, list):
                drops.add("malformed_images", f"`images` is a {type(images).__name__}, not a list "
                          "of paths", where)
                continue
            for k, parsed in enumerate(records.conversations(rec, src.format)):
                if parsed.reason:
                    drops.add(parsed.reason, parsed.detail, where)
                else:
                    pool.append({"id": f"{name}/{where.rsplit('/', 1)[-1]}/{k}", "source": name,
                                 "messages": parsed.value,
                                 **({"images": _image_paths(images, where, src)} if images else {})})
        for f, line, err in stats.corrupt:
            drops.add("corrupt_line", err, f"{f}:{line}")
        return pool, drops

    def _require(self, name: str, key: str, src, pool: list, drops: records.Drops) -> None:
        """Stop before training when a weighted source has nothing usable, naming its files."""
        if pool or not src.weight:
            return
        where = src.path or src.hf_dataset or f"{self.data}/synthetic_dropped"
        why = ", ".join(f"{r} {n}" for r, n in sorted(drops.counts.items())) or "no records"
        raise ValueError(f"posttrain.{key}.{name}: nothing usable in {where} ({why}); see "
                         f"{self.data}/ for the dropped records and their reasons")

    def _write_drops(self, kind: str, drops: dict) -> None:
        rows = [{"source": name, **ex} for name, d in drops.items() for ex in d.examples]
        _write_jsonl(self.data / f"{kind}_drops.jsonl", rows)

    # ------------------------------------------------------------------ training phases
    def _phase_fp(self, phase: str, start_label: str, data_file: Path) -> Fingerprint:
        pc = self.pc
        cfg = {f"posttrain.{phase}": results_view(getattr(pc, phase)),
               "posttrain.lora": results_view(pc.lora), "template": self._template(),
               **{f"posttrain.{k}": getattr(pc, k) for k in
                  ("launcher", "num_gpus", "num_nodes", "zero_stage", "precision")}}
        inputs = {"model": model_identity(self.model_dir(start_label)), "data": file_digest(data_file)}
        if phase == "sft" and self._vision():
            inputs.update(self._vision_inputs(read_jsonl(data_file)))
        return self._fp(cfg, inputs)

    def _train(self, phase: str, start_label: str, data_file: Path, columns: list[str]) -> dict:
        fp = self._phase_fp(phase, start_label, data_file)
        phase_dir = self.out / phase
        final = phase_dir / "model" / "posttrain.json"
        if final.is_file() and read_json(final).get("fingerprint", {}).get("key") == fp.key:
            if self.step_current(f"train_{phase}", fp):
                return self.step_stats(f"train_{phase}")
            return self._record_phase(phase, fp, None)  # trained; killed before the record
        stored = phase_dir / "fingerprint.json"
        if stored.is_file() and read_json(stored).get("key") != fp.key:
            changed = fp.changes(read_json(stored))
            self.log(f"{phase}: the run in {phase_dir} was made with another config "
                     f"({', '.join(changed[:6])} changed): removed, training again")
            shutil.rmtree(phase_dir)
        phase_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(stored, fp.to_dict())
        job = self._job(phase, phase_dir, start_label, data_file, columns, fp)
        launch.prepare(self.pc, phase_dir, job)
        seconds = launch.launch(self.pc, phase_dir, hostfile=self._hostfile(), on_line=self.log)
        return self._record_phase(phase, fp, seconds)

    def _record_phase(self, phase: str, fp: Fingerprint, seconds: Optional[float]) -> dict:
        history = list(read_jsonl(self.out / phase / "metrics.jsonl"))
        return self.record(f"train_{phase}", fingerprint=fp,
                           seconds=None if seconds is None else round(seconds, 1),
                           metrics=_train_metrics(phase, history),
                           counts={f"{phase}_steps": max((h.get("step", 0) for h in history), default=0)})

    def _job(self, phase: str, phase_dir: Path, start_label: str, data_file: Path,
             columns: list[str], fp: Fingerprint) -> dict:
        from transformers import AutoTokenizer

        pc, s = self.pc, getattr(self.pc, phase)
        start = self.model_dir(start_label)
        accumulation = s.global_batch_size // (s.micro_batch_size * pc.world_size)
        args = dict(precision=pc.precision, learning_rate=s.lr,
                    lr_scheduler_type={"constant": "constant_with_warmup"}.get(s.schedule, s.schedule),
                    warmup_steps=s.warmup_ratio, weight_decay=s.weight_decay,
                    num_train_epochs=s.epochs, max_steps=s.max_steps or -1,
                    per_device_train_batch_size=s.micro_batch_size,
                    gradient_accumulation_steps=accumulation, max_grad_norm=s.grad_clip,
                    max_length=s.max_length, save_steps=s.save_steps, save_total_limit=s.keep_last,
                    logging_steps=s.log_every, seed=self.cfg.run.seed,
                    activation_checkpointing=pc.gradient_checkpointing)
        if phase == "sft":
            args.update(assistant_only_loss=True, packing=s.packing)
        else:
            args.update(beta=s.beta, loss_type=[s.loss_type])
        tok = AutoTokenizer.from_pretrained(start)
        return {"phase": phase, "phase_dir": str(phase_dir), "model": str(start), "data": str(data_file),
                "columns": columns, "args": args, "device": pc.device,
                "lora": results_view(pc.lora) if pc.lora.enabled else None,
                "end_of_turn_id": chat.end_of_turn_id(tok, self._template()),
                "fingerprint": fp.to_dict(),
                **({"vision": {"num_crops": self.cfg.mix.image_text.num_crops}}
                   if phase == "sft" and self._vision() else {})}

    def _hostfile(self) -> Optional[Path]:
        if not self.pc.hostfile:
            return None
        path = Path(self.pc.hostfile)
        if not path.is_absolute() and self.cfg.params_file:
            path = Path(self.cfg.params_file).parent / path
        return path

    def train_sft(self) -> dict:
        """SFT with TRL from the base model: loss on the assistant's tokens only."""
        return self._train("sft", "base", self.data / "sft.jsonl", ["messages"])

    def train_dpo(self) -> dict:
        """DPO with TRL from the SFT model, which is also the reference."""
        if self._vision():
            raise vision.dpo_unsupported(self.pc)
        return self._train("dpo", "sft", self.data / "pairs.jsonl", ["prompt", "chosen", "rejected"])

    # ------------------------------------------------------------------ preference data
    def preference_data(self, progress: bool = True) -> dict:
        """The DPO pairs: from files by weight, plus generated ones ranked by the judge."""
        pref, data_dir = self.pc.preference, self.cfg.run.data_dir
        if self._vision():  # the first DPO step: nothing is generated or judged
            raise vision.dpo_unsupported(self.pc)
        file_inputs = self._register("pairs", pref.sources)
        gen_fp = self._generation_fp(file_inputs) if pref.generate else None
        fp = self._fp({"posttrain.preference": results_view(pref),
                       "posttrain.dpo.max_length": self.pc.dpo.max_length},
                      {**file_inputs, "base": self._base_key(),
                       **({"generated": gen_fp.key} if gen_fp else {})})
        target = self.data / "pairs.jsonl"
        if self.step_current("preference_data", fp) and target.is_file():
            return self.step_stats("preference_data")
        with self.timed() as t:
            pools, drops, prompts = {}, {}, {}
            for name, src in pref.sources.items():
                pools[name], drops[name] = self._read_pairs(name, src, data_dir)
                pools[name] = self._fits(pools[name], drops[name], "dpo")
                self._require(name, "preference.sources", src, pools[name], drops[name])
            chosen, mix_stats = sources.mix(pools, {k: s.weight for k, s in pref.sources.items()},
                                            pref.pairs if pref.sources else 0, self.cfg.run.seed)
            statuses: dict[str, int] = {}
            if pref.generate:
                drops["generated"] = records.Drops()
                prompts = self._fits(self._generation_prompts(pools), drops["generated"], "dpo")
                gen = self._generated_pairs(prompts, gen_fp, progress)
                for r in gen:
                    statuses[r["status"]] = statuses.get(r["status"], 0) + 1
                chosen += [pairs.as_pair(r) for r in gen if r["status"] == "kept"]
            if not chosen:
                raise ValueError(f"posttrain.preference: no usable pair (file sources: "
                                 f"{_where(pref.sources)}; generated: {statuses or 'none'}); "
                                 f"see {self.data}/pairs_drops.jsonl and generated_pairs/")
            _write_jsonl(target, chosen)
            self._write_drops("pairs", drops)
        counts = {"pairs": len(chosen), **{f"pairs/{n}/{k}": v for n, st in mix_stats.items()
                                           for k, v in st.items()},
                  **{f"generated/{k}": v for k, v in statuses.items()}}
        return self.record("preference_data", fingerprint=fp, seconds=t["seconds"], counts=counts,
                           drops=_flat_drops("pairs", drops), sources=mix_stats, generated=statuses)

    def _generation_fp(self, file_inputs: dict) -> Fingerprint:
        """What the generated pairs depend on (not the file pairs' share: changing that
        leaves them current)."""
        pref = self.pc.preference
        keys = ("generate", "prompts_from", "sampling", "judge", "judge_sampling", "judge_format")
        config = {f"posttrain.preference.{k}": results_view(getattr(pref, k)) for k in keys}
        config["posttrain.generation_backend"] = self.pc.generation_backend
        if pref.prompts_from != "sft":
            config["prompt_source"] = results_view(pref.sources[pref.prompts_from])
        prompts = file_digest(self.data / "sft.jsonl") if pref.prompts_from == "sft" \
            else file_inputs[f"pairs/{pref.prompts_from}"]
        return self._fp({**config, "posttrain.dpo.max_length": self.pc.dpo.max_length},
                        {"policy": model_identity(self.model_dir("sft")), "prompts": prompts,
                         "base": self._base_key()})

    def _read_pairs(self, name: str, src, data_dir):
        stats, drops, pool = ReadStats(), records.Drops(), []
        for rec, where in sources.read(src, stats, data_dir):
            parsed = records.pair(rec, src.format)
            if parsed.reason:
                drops.add(parsed.reason, parsed.detail, where)
            else:
                pool.append({"id": f"{name}/{where.rsplit('/', 1)[-1]}", "source": name, **parsed.value})
        for f, line, err in stats.corrupt:
            drops.add("corrupt_line", err, f"{f}:{line}")
        return pool, drops

    def _generation_prompts(self, pools: dict) -> list[dict]:
        import random

        pref = self.pc.preference
        if pref.prompts_from == "sft":
            convs = list(read_jsonl(self.data / "sft.jsonl"))
            cands = {c["id"]: c["messages"][:-1] for c in convs}
        else:
            cands = {p["id"]: p["prompt"] for p in pools[pref.prompts_from]}
        ids = sorted(cands)
        random.Random(f"{self.cfg.run.seed}-prompts").shuffle(ids)
        return [{"id": i, "prompt": cands[i], "source": pref.prompts_from}
                for i in ids[:pref.generate]]

    def _generated_pairs(self, prompts: list[dict], fp: Fingerprint, progress: bool) -> list[dict]:
        from phi_lib.backends import get_backend

        pref = self.pc.preference
        policy_cfg = self._backend("sft", batch_size=pref.judge.batch_size)
        with get_backend(policy_cfg, data_dir=self.cfg.run.data_dir) as policy, \
                get_backend(pref.judge, cache_dir=self.out / ".cache" / "judge",
                            run_dir=self.cfg.run_dir, data_dir=self.cfg.run.data_dir) as judge:
            return pairs.generate(prompts, policy, judge, self.pc, self.data / "generated_pairs", fp,
                                  run_seed=self.cfg.run.seed, batch_size=pref.judge.batch_size,
                                  data_dir=self.cfg.run.data_dir, progress=progress)

    # ------------------------------------------------------------------ measurements
    def _labels(self) -> list[str]:
        return list(self.pc.measure.models)

    def _measured(self, label: str, kind: str, fp: Fingerprint, compute) -> dict:
        """`measure/<label>/<kind>.json` if made with `fp`, else `compute()` (the command run
        with --force: its own caches are keyed by the model's name, not its weights)."""
        path = self.out / "measure" / label / f"{kind}.json"
        if path.is_file() and read_json(path).get("fingerprint", {}).get("key") == fp.key:
            return read_json(path)["result"]
        result = compute()
        atomic_write_json(path, {"fingerprint": fp.to_dict(), "result": result})
        return result

    def benchmarks(self) -> dict:
        """Stage 06's tasks on each model (the eval command, `evaluate`'s settings)."""
        m = self.pc.measure
        config = measure.write_config(self.cfg, self.out / "measure" / "config.yaml")
        settings = {k: v for k, v in results_view(self.cfg.evaluate).items()
                    if k not in ("model", "reference_models", "tasks", "limit")}
        out = {}
        with self.timed() as t:
            for label in self._labels():
                fp = self._fp({"tasks": m.tasks, "limit": m.limit, "evaluate": settings},
                              {"model": model_identity(self.model_dir(label))})
                out[label] = self._measured(label, "benchmarks", fp, lambda label=label: measure.benchmarks(
                    str(self.model_dir(label)), m.tasks, m.limit, config,
                    self.out / "measure" / label / "benchmarks", force=True, on_line=self.log))
        return self.record("benchmarks", seconds=t["seconds"],
                           metrics={f"{label}/{task}": _headline(r) for label, res in out.items()
                                    for task, r in res["results"].items()},
                           results={label: res["results"] for label, res in out.items()})

    def mt_bench(self) -> dict:
        """MT-bench answers of each model, graded 1-10 by the judge (FastChat's rubrics)."""
        from phi_lib.backends import get_backend

        m, data_dir = self.pc.measure, self.cfg.run.data_dir
        qs = mt_bench.questions(m.mt_bench_limit, data_dir)
        scores = {}
        with self.timed() as t:
            for label in self._labels():
                folder = self.out / "measure" / label / "mt_bench"
                ans_fp = self._fp({"mt_bench_limit": m.mt_bench_limit,
                                   "max_new_tokens": m.mt_bench_max_new_tokens,
                                   "backend": self.pc.generation_backend},
                                  {"model": model_identity(self.model_dir(label))})
                pairs.reset_if_stale(folder / "answers", ans_fp)
                bs = self.cfg.evaluate.batch_size
                with get_backend(self._backend(label, bs), data_dir=data_dir) as b:
                    answers = mt_bench.answer(b, qs, folder / "answers", m.mt_bench_max_new_tokens,
                                              model_id=ans_fp.inputs["model"], batch_size=bs)
                grade_fp = self._fp({"judge": results_view(m.judge),
                                     "judge_sampling": results_view(m.judge_sampling),
                                     "judge_format": m.judge_format}, {"answers": ans_fp.key})
                pairs.reset_if_stale(folder / "grades", grade_fp)
                with get_backend(m.judge, cache_dir=self.out / ".cache" / "judge",
                                 run_dir=self.cfg.run_dir, data_dir=data_dir) as judge:
                    grades = mt_bench.grade(judge, qs, answers, folder / "grades", m.judge_sampling,
                                            m.judge_format, data_dir=data_dir,
                                            batch_size=m.judge.batch_size)
                scores[label] = mt_bench.score(grades)
                atomic_write_json(folder / "score.json", scores[label])
        metrics = {f"{label}/mt_bench": s["score"] for label, s in scores.items()}
        counts = {f"{label}/mt_bench_unparsed": s["unparsed"] for label, s in scores.items()}
        return self.record("mt_bench", seconds=t["seconds"], metrics=metrics, counts=counts,
                           scores=scores)

    def probes(self) -> dict:
        """Stage 07 re-run on each model: ToxiGen score, adversarial prompts, judge grades."""
        m = self.pc.measure
        if not m.probes:
            return self.record("probes", counts={"probed_models": 0}, summaries={})
        config = measure.write_config(self.cfg, self.out / "measure" / "config.yaml")
        over = {k: v for k, v in (("toxicity.probe_limit", m.probe_limit),
                                  ("toxicity.per_group", m.toxigen_per_group),
                                  ("toxicity.groups", "[" + ",".join(m.toxigen_groups) + "]"
                                   if m.toxigen_groups else None)) if v is not None}
        tox = {k: v for k, v in results_view(self.cfg.toxicity).items() if k != "models"}
        out = {}
        with self.timed() as t:
            for label in self._labels():
                fp = self._fp({"toxicity": tox, "overrides": over},
                              {"model": model_identity(self.model_dir(label))})
                res = self._measured(label, "probes", fp, lambda label=label: measure.probes(
                    str(self.model_dir(label)), config, self.out / "measure" / label, over,
                    force=True, on_line=self.log))
                out[label] = measure.probe_summary(res)
        metrics = {f"{label}/{k}": v for label, s in out.items()
                   for k, v in (("toxigen", s["toxigen_mean"]), ("probe_pass_rate", s["probe_pass_rate"]))}
        return self.record("probes", seconds=t["seconds"], metrics=metrics, summaries=out)

    # ------------------------------------------------------------------ results
    def write_results(self) -> dict:
        """`results.json`: data, training and every measurement of base / SFT / DPO."""
        from phi_lib.stages import STAGES

        steps = {s["step"]: s for s in self.all_stats()}
        per_model: dict[str, dict] = {label: {} for label in self._labels()}
        for kind, key in (("benchmarks", "results"), ("mt_bench", "scores"), ("probes", "summaries")):
            for label, value in ((steps.get(kind) or {}).get(key) or {}).items():
                if label in per_model:  # what this run measured (the step records only that)
                    per_model[label][kind] = value
        results = {"config_hash": STAGES["08"].config_hash(self.cfg), "template": self._template(),
                   "base_model": self.pc.base_model, "steps": steps, "models": per_model,
                   "paper": {"mt_bench": mt_bench.PAPER}}
        atomic_write_json(self.out / "results.json", results)
        return results


# ----------------------------------------------------------------------------- helpers
def _has_tokenizer(path: str) -> bool:
    p = Path(path)
    return not p.is_dir() or any((p / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json"))


def _link_weights(src: str, dest: Path) -> None:
    """Link the weight and config files of `src` into `dest` (a hub name is saved instead)."""
    import fnmatch

    p = Path(src)
    if not p.is_dir():
        from transformers import AutoModelForCausalLM

        AutoModelForCausalLM.from_pretrained(src).save_pretrained(dest)
        return
    for f in sorted(p.iterdir()):
        if f.is_file() and any(fnmatch.fnmatch(f.name, pat) for pat in WEIGHT_FILES):
            (dest / f.name).symlink_to(f.resolve())


def _image_paths(images: list, where: str, src) -> list[str]:
    """A record's image paths, relative ones from its file's folder (stage 03's rule)."""
    from phi_lib.image_text import absolute_images

    if src.kind != "file":
        return [str(p) for p in images]
    return absolute_images(images, Path(where.rsplit(":", 1)[0]).parent)


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    import json

    with atomic_open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def _flat_drops(kind: str, drops: dict) -> dict:
    return {f"{kind}/{name}/{reason}": n for name, d in drops.items() for reason, n in d.counts.items()}


def _where(srcs: dict) -> str:
    return ", ".join(f"{n}={s.path or s.hf_dataset}" for n, s in srcs.items()) or "none"


def _headline(task_result: dict) -> Optional[float]:
    """A task's headline number: accuracy, else exact match, else pass@1 (stage 06's table)."""
    return next((task_result[k] for k in ("acc", "exact_match", "pass@1") if k in task_result), None)


def _train_metrics(phase: str, history: list[dict]) -> dict:
    """First and last logged loss, and for DPO the reward margin, accuracy and chosen reward."""
    logs = [h for h in history if "loss" in h]
    if not logs:
        return {}
    out = {f"{phase}/loss_first": logs[0]["loss"], f"{phase}/loss_last": logs[-1]["loss"]}
    for key in ("mean_token_accuracy", "rewards/margins", "rewards/accuracies", "rewards/chosen",
                "rewards/rejected"):
        if key in logs[-1]:
            out[f"{phase}/{key}"] = logs[-1][key]
            out[f"{phase}/{key}_first"] = logs[0][key]
    return out
