"""What produced a checkpoint, and whether training may resume from it (phi_lib.provenance).

Every checkpoint's `trainer_state.json` holds the fingerprint of its phase:

* config: the result-affecting `train` fields (of the pretraining; the finetune's also hold
  `train.finetune`), the `model` section and the seed;
* inputs: the identity of the packed data it read (`data`, and `finetune_data` for the
  finetune: :func:`packed_identity`; `image_text`, phi-3-vision's records, when stage 03 wrote them) and of `train.init_from` (its weights' content digest).

Left out, because they change neither a checkpoint nor a metrics row: `train.keep_last`
(which checkpoints stay on disk) and `train.finetune.select_by` (which one stage 06 uses), as
well as the operational fields (`log_every`, `tensorboard`, ports, buckets, planner inputs).

A run resumes from its newest checkpoint only if that fingerprint still matches, or differs
by a *continuation*: a change that leaves every step already trained as it was:

* `train.stop_at` (pretraining): the schedule runs over `max_steps` whatever step it stops
  at, so phi-1-base (stopped at 24K of 36K) continues to 36K unchanged;
* `train.max_steps` (`train.finetune.max_steps` in the finetune) under the `constant`
  schedule, whose lr at a step does not depend on the run's length (phi-1.5 can be extended).
  Under `linear`/`cosine` decay the length changes every step's lr: that is a change.

Either way the resumed step must not be past the new end. Anything else stops training
before any work with :class:`~phi_lib.provenance.StaleArtifact`, naming the changed keys and
the two ways out (a new `run.name`, or `--force`, which discards the stage folder).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from phi_lib.config import Config
from phi_lib.packed import DOC_STARTS_FILE, FINETUNE_DIR, INDEX_FILE, SPLITS
from phi_lib.provenance import (Fingerprint, StaleArtifact, digest, file_digest, model_identity,
                                results_view, stale_message)
from phi_lib.stages import STAGES
from phi_lib.train import checkpoint as ckpt
from phi_lib.train.phases import Phase, plan_phases

def packed_identity(mix_dir: Path) -> str:
    """Identity of a packed mixture's splits: content digests of each split's index (shards,
    windows, seq_len, eos) and document starts, and the shards' sizes. Cheap at any scale (the
    token shards themselves are not read); stage 03's own fingerprint, part of stage 05's,
    covers how they were made."""
    parts = {}
    for split in SPLITS:
        folder = Path(mix_dir) / split
        if not (folder / INDEX_FILE).is_file():
            continue
        starts = folder / DOC_STARTS_FILE
        parts[split] = {"index": file_digest(folder / INDEX_FILE),
                        "doc_starts": file_digest(starts) if starts.is_file() else None,
                        "shards": sorted((f.name, f.stat().st_size) for f in folder.glob("*.bin"))}
    return digest(parts) if parts else "missing"


def image_text_identity(mix_dir: Path) -> Optional[str]:
    """Identity of stage 03's image-text records (their index, which carries the fingerprint
    of the records' files and images, and the split files), or None when there are none."""
    from phi_lib.image_text import IMAGE_TEXT_DIR, INDEX

    folder = Path(mix_dir) / IMAGE_TEXT_DIR
    if not (folder / INDEX).is_file():
        return None
    return digest({f.name: file_digest(f) for f in sorted(folder.glob("*.json*"))})


def phase_fingerprint(cfg: Config, phase: str) -> Fingerprint:
    """The fingerprint a checkpoint of `phase` (`pretrain` or `finetune`) carries."""
    train = results_view(cfg.train)
    finetune = train.pop("finetune")
    train.pop("keep_last")  # which checkpoints stay on disk, not what any of them is
    finetune.pop("select_by")  # which one stages 06/07 use
    mix = STAGES["03"].dir(cfg)
    init = cfg.train.init_from
    inputs = {"data": packed_identity(mix), "init_from": model_identity(init) if init else None}
    image_text = image_text_identity(mix)
    if image_text is not None:  # phi-3-vision's records (absent from text runs' fingerprints)
        inputs["image_text"] = image_text
    if phase == "finetune":
        train["finetune"] = finetune
        inputs["finetune_data"] = packed_identity(mix / FINETUNE_DIR)
    return Fingerprint.of(config={"run": results_view(cfg.run), "model": results_view(cfg.model),
                                  "train": train}, inputs=inputs)


def continuation_keys(cfg: Config, phase: Phase) -> set[str]:
    """Changed keys a checkpoint of `phase` may resume across (see the module docstring)."""
    keys = {"train.stop_at"} if phase.name == "pretrain" else set()
    if cfg.train.schedule == "constant":
        keys.add("train.max_steps" if phase.name == "pretrain" else "train.finetune.max_steps")
    return keys


def blocking_changes(state: dict, cfg: Config, phase: Optional[Phase]) -> list[str]:
    """Why the checkpoint with `state` (its trainer_state.json) cannot be resumed under `cfg`
    ([] = it can): the changed keys that are not continuations, or a step past the end."""
    current = phase_fingerprint(cfg, phase.name if phase else state.get("phase", "pretrain"))
    changes = current.changes(state.get("fingerprint"))
    if phase is None or state["step"] > phase.last_step:
        return changes or [f"the phase ends before step {state['step']}"]
    allowed = continuation_keys(cfg, phase)
    return [c for c in changes if c not in allowed]


def phase_of(state: dict, phases: list[Phase]) -> Optional[Phase]:
    return next((p for p in phases if p.name == state.get("phase")), None)


def check_resume(cfg: Config, out: Path) -> tuple[Optional[Path], Optional[dict]]:
    """The checkpoint training resumes from and its state ((None, None) = a fresh start), or
    StaleArtifact if it (or the finetune's start checkpoint) was made with another config.
    Reads only JSON files and the packed indexes: call it before any work."""
    root = Path(out) / "checkpoints"
    latest = ckpt.latest(root)
    if latest is None:
        return None, None
    state = ckpt.read_state(latest)
    phases = plan_phases(cfg, out)
    blocking = blocking_changes(state, cfg, phase_of(state, phases))
    if blocking:
        raise StaleArtifact(stale_message(f"checkpoint {latest.name}", root, blocking))
    ft = phase_of({"phase": "finetune"}, phases)
    start = cfg.train.finetune_start
    if ft is not None and start <= state["step"] <= ft.offset \
            and not (ft.init_from / ckpt.STATE_FILE).is_file():
        kept = [s for s, _ in ckpt.list_checkpoints(root)]
        raise StaleArtifact(
            f"train.finetune.from_step: the finetune starts from the pretraining checkpoint "
            f"step-{start}, which {root} does not hold (kept: {kept}): the pretraining passed "
            f"step {start} before the config named it. Keep this run by giving the config a new "
            f"`run.name`, or discard it and retrain with --force (python -m phi_lib run ... "
            f"--force), or start the finetune from a kept step")
    return latest, state
