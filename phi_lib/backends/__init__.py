"""Text-generation backends shared by synthesis, annotation and the toxicity judge.

    from phi_lib.backends import get_backend
    with get_backend(cfg.synth.backend, cache_dir=out / "cache") as backend:
        completions = backend.generate(prompts, cfg.synth.sampling, seeds=seeds)

`kind` picks the implementation: `transformers` (local model, the embedded default),
`openai` (any OpenAI-compatible HTTP server: vLLM, TGI, llama.cpp, hosted APIs) or `vllm`
(in-process, GPU). With `cache: true` every completion is stored on disk by request hash.

:func:`backend_identity` is what a generated artifact's fingerprint records of its backend:
the result-affecting settings plus the content digest of a local model file or folder, so a
changed model behind the same name is a different generator (also for the request cache).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from phi_lib.backends.base import Backend, Completion, Prompt
from phi_lib.config import BackendConfig

__all__ = ["Backend", "Completion", "Prompt", "backend_identity", "default_cache_dir",
           "get_backend", "model_path"]


def default_cache_dir() -> Path:
    """Where completions are cached when the caller names no folder."""
    from phi_lib.hf_models import cache_dir

    return cache_dir() / "requests"


def model_path(cfg: BackendConfig, run_dir=None) -> Optional[Path]:
    """The local model file or folder a local backend loads; None for a hub name or a model
    served over HTTP (then its name is all we know of it)."""
    from phi_lib import hf_models

    if cfg.kind == "openai":
        return None
    if cfg.model == "smollm2":
        return hf_models.smollm2_gguf()
    if cfg.model == "checkpoint":
        return hf_models.latest_checkpoint(run_dir) if run_dir is not None else None
    path = Path(cfg.model).expanduser()
    return path if path.exists() else None


def backend_identity(cfg: BackendConfig, run_dir=None) -> dict:
    """What decides a backend's completions: its result-affecting settings (kind, model, dtype;
    not endpoints, concurrency or batch size) and `model_identity`, the content digest of the
    local model file/folder (`name:<model>` for a hub or server model)."""
    from phi_lib.provenance import model_identity, results_view

    return {**results_view(cfg), "model_identity": model_identity(model_path(cfg, run_dir),
                                                                  name=cfg.model)}


def get_backend(cfg: BackendConfig, cache_dir: Optional[Path] = None, *, run_dir=None,
                data_dir: Optional[str] = None) -> Backend:
    """The backend `cfg.kind` describes, wrapped in the request cache if `cfg.cache`.

    `cache_dir` defaults to the workbook cache (`$PHI_CACHE/requests`); `run_dir` lets the
    local backends load the model name `checkpoint` (stage 05's last checkpoint).
    """
    cfg.check()
    if cfg.kind == "transformers":
        from phi_lib.backends.local import TransformersBackend

        backend: Backend = TransformersBackend(cfg, run_dir=run_dir, data_dir=data_dir)
    elif cfg.kind == "openai":
        from phi_lib.backends.openai_http import OpenAIBackend

        backend = OpenAIBackend(cfg)
    elif cfg.kind == "vllm":
        from phi_lib.backends.vllm_inproc import VLLMBackend

        backend = VLLMBackend(cfg, run_dir=run_dir)
    else:  # BackendConfig.check() names the allowed kinds
        raise ValueError(f"backend.kind: unknown backend {cfg.kind!r}")
    if not cfg.cache:
        return backend
    from phi_lib.backends.cache import CachedBackend
    from phi_lib.provenance import digest

    return CachedBackend(backend, Path(cache_dir) if cache_dir is not None else default_cache_dir(),
                         identity=digest(backend_identity(cfg, run_dir)))
