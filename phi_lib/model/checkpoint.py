"""Hugging Face checkpoints: `config.json` + `model.safetensors`, names as in transformers.

A folder we write loads with `transformers.AutoModelForCausalLM.from_pretrained`; a folder
transformers wrote (or a `microsoft/phi-1_5` / `phi-2` / `Phi-3-mini-4k` download) loads
into ours. Sharded (`*.index.json`) and legacy `pytorch_model.bin` weights are read too.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Optional, Union

import torch

from phi_lib.io import atomic_write_json
from phi_lib.model.config import PhiConfig
from phi_lib.paths import MissingDataError

WEIGHTS = "model.safetensors"
_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16,
           "fp16": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def save_pretrained(model, directory: Union[str, Path], dtype: Optional[Union[str, torch.dtype]] = None) -> Path:
    """Write config.json, generation_config.json and model.safetensors (atomically each)."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    dtype = _dtype(dtype) if dtype is not None else None
    tensors = {}
    for name, t in model.state_dict().items():
        t = t.detach()
        if dtype is not None and t.is_floating_point():
            t = t.to(dtype)
        tensors[name] = t.contiguous().cpu()
    if model.config.tie_word_embeddings:
        tensors.pop("lm_head.weight", None)  # safetensors refuses shared storage
    fd, tmp = tempfile.mkstemp(prefix=f".{WEIGHTS}.", suffix=".tmp", dir=directory)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata={"format": "pt"})
        os.replace(tmp, directory / WEIGHTS)
    finally:
        Path(tmp).unlink(missing_ok=True)
    config = model.config.to_hf_dict()
    config["torch_dtype"] = str(next(iter(tensors.values())).dtype).replace("torch.", "")
    atomic_write_json(directory / "config.json", config)
    gen = {k: getattr(model.config, k) for k in ("bos_token_id", "eos_token_id", "pad_token_id")
           if getattr(model.config, k) is not None}
    atomic_write_json(directory / "generation_config.json", gen)
    return directory


def from_pretrained(cls, name_or_dir: Union[str, Path], *, dtype: Union[str, torch.dtype, None] = "float32",
                    device: Union[str, torch.device] = "cpu", **config_overrides: Any):
    """Load a checkpoint folder (or hub name) into `cls` (PhiForCausalLM; a `phi3small`
    config.json loads into Phi3SmallForCausalLM whatever `cls` is).

    dtype: `float32` (default), `bfloat16`, `float16`, or `auto` / None to keep the stored dtype.
    config_overrides: PhiConfig fields to change (e.g. `attn_implementation="eager"`).
    """
    folder = _local_folder(name_or_dir)
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise MissingDataError(f"{folder}: no config.json (not a Hugging Face checkpoint folder)")
    hf = json.loads(config_file.read_text())
    if hf.get("model_type") == "phi3small":  # its own architecture family and class
        from phi_lib.model.phi3_small import Phi3SmallForCausalLM

        cls = Phi3SmallForCausalLM
    config = getattr(cls, "config_class", PhiConfig).from_hf_dict(hf, **config_overrides)
    state = load_state_dict(folder)
    state = {k: v for k, v in state.items() if not k.endswith("rotary_emb.inv_freq")}
    if config.tie_word_embeddings and "lm_head.weight" not in state:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    with torch.device("meta"):
        model = cls(config)
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise ValueError(f"{folder}: checkpoint does not match the {config.arch} architecture of its "
                         f"config.json; missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                         f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}")
    if dtype not in (None, "auto"):
        target = _dtype(dtype)
        state = {k: v.to(target) if v.is_floating_point() else v for k, v in state.items()}
    model.load_state_dict(state, strict=True, assign=True)
    if config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    return model.to(device).eval()


def load_state_dict(folder: Path) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint folder: single or sharded safetensors, or pytorch_model.bin."""
    from safetensors.torch import load_file

    for index_name, loader in (("model.safetensors.index.json", load_file),
                               ("pytorch_model.bin.index.json", _torch_load)):
        index = folder / index_name
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            state: dict[str, torch.Tensor] = {}
            for shard in shards:
                state.update(loader(str(folder / shard)))
            return state
    if (folder / WEIGHTS).is_file():
        return load_file(str(folder / WEIGHTS))
    if (folder / "pytorch_model.bin").is_file():
        return _torch_load(str(folder / "pytorch_model.bin"))
    raise MissingDataError(f"{folder}: no model.safetensors, pytorch_model.bin or shard index")


def _torch_load(path: str) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)


def _local_folder(name_or_dir: Union[str, Path]) -> Path:
    path = Path(name_or_dir).expanduser()
    if path.is_dir():
        return path
    if path.exists() or str(name_or_dir).count("/") != 1:
        raise MissingDataError(f"{name_or_dir}: not a checkpoint folder, nor a hub name (owner/model)")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(str(name_or_dir), allow_patterns=["*.json", "*.safetensors"]))
    except Exception as e:  # noqa: BLE001 - offline, gated, typo: one clear message
        raise MissingDataError(f"{name_or_dir}: not a local folder, and the hub download failed: "
                               f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e


def _dtype(dtype: Union[str, torch.dtype]) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise ValueError(f"dtype {dtype!r}: use one of {', '.join(_DTYPES)}")
    return _DTYPES[dtype]
