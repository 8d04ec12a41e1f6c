"""Where things are: the project root, the data folder, and local-or-hub resolution.

Every loader of a downloaded file (tokenizers, benchmarks, corpora) goes through
:func:`resolve`: the file in the data folder (env ``PHI_DATA`` or ``run.data_dir``, with the
layout of ``shared/``) if it is there, else the hub, else one error that names both.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Optional, TypeVar, Union

T = TypeVar("T")


class MissingDataError(FileNotFoundError):
    """A data file is neither in the data folder nor reachable on the hub."""


def project_root() -> Path:
    """The checkout (the folder holding `phi_lib/`)."""
    return Path(__file__).resolve().parent.parent


def data_dir(configured: Optional[str] = None) -> Optional[Path]:
    """The data folder: `configured` (config `run.data_dir`), else env `PHI_DATA`, else
    `../shared` beside the checkout when it exists (the layout the README describes), else None."""
    value = configured or os.environ.get("PHI_DATA")
    if not value:
        beside = project_root().parent / "shared"
        return beside if (beside / "benchmarks").is_dir() else None
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = project_root() / path
    return path


def data_path(rel: Union[str, Path], configured: Optional[str] = None) -> Optional[Path]:
    """`rel` inside the data folder if it exists there (absolute paths are taken as given)."""
    rel = Path(rel)
    if rel.is_absolute():
        return rel if rel.exists() else None
    root = data_dir(configured)
    if root is None:
        return None
    path = root / rel
    return path if path.exists() else None


def resolve(rel: Union[str, Path], *, hub: Optional[str] = None,
            hub_loader: Optional[Callable[[str], T]] = None,
            configured: Optional[str] = None) -> Union[Path, T]:
    """The local file/folder `rel` if present, else ``hub_loader(hub)``, else a clear error.

    >>> resolve("tokenizers/codegen-350M-mono", hub="Salesforce/codegen-350M-mono",
    ...         hub_loader=lambda name: snapshot(name))  # doctest: +SKIP
    """
    local = data_path(rel, configured)
    if local is not None:
        return local
    root = data_dir(configured)
    where = (f"not in the data folder ({root / rel} does not exist)" if root is not None
             else "no data folder is set (env PHI_DATA or run.data_dir)")
    if hub is None or hub_loader is None:
        raise MissingDataError(f"{rel}: {where}, and it has no hub fallback")
    try:
        return hub_loader(hub)
    except Exception as e:  # noqa: BLE001 - any hub failure becomes one clear message
        raise MissingDataError(
            f"{rel}: {where}, and the hub fallback {hub!r} failed: "
            f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e
