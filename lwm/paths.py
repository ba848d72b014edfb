"""One filesystem layer for run, checkpoint, stage and model directories: local paths and URLs.

Every directory a user names (`logging.output_dir`, `checkpoint.directory`,
`checkpoint.init_from`, ...) goes through `as_path`, which returns an `etils.epath.Path`. A
URL (`gs://bucket/run`, `s3://...`) stays a URL: epath reads and writes it through fsspec (or
TensorFlow's gfile where installed), and Orbax takes the same object. A local path becomes
absolute. `pathlib.Path("gs://bucket/run")` would instead become the local folder
`gs:/bucket/run`, which is why nothing here uses pathlib for these names.
"""

from __future__ import annotations

import os
import re

from etils import epath

from lwm.errors import LwmError

# The URL schemes epath understands; another scheme would silently become a local folder.
SUPPORTED_SCHEMES = ("gs", "s3", "az", "hf")
_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


class PathError(LwmError, ValueError):
    """A directory name that cannot be used (an unsupported URL scheme)."""


def url_scheme(path: str | os.PathLike) -> str:
    """The URL scheme of `path` (`"gs"` for `gs://bucket/x`), or `""` for a local path."""
    match = _URL.match(os.fspath(path))
    return match.group(1).lower() if match else ""


def is_url(path: str | os.PathLike) -> bool:
    """Whether `path` names a location by URL (`gs://...`) rather than a local file."""
    return bool(url_scheme(path))


def as_path(path: str | os.PathLike) -> epath.Path:
    """`path` as an `epath.Path`: a URL kept as a URL, a local path made absolute.

    Raises `PathError` for a URL whose scheme epath cannot open (it would otherwise be read as
    a local folder named like the URL).
    """
    if isinstance(path, epath.Path):
        return path if is_url(path) else path.resolve()
    text = os.fspath(path)
    scheme = url_scheme(text)
    if scheme and scheme not in SUPPORTED_SCHEMES:
        raise PathError(
            f"{text}: the URL scheme {scheme}:// is not supported; use a local path or one of "
            f"{', '.join(s + '://' for s in SUPPORTED_SCHEMES)}"
        )
    result = epath.Path(text)
    return result if scheme else result.resolve()


def ensure_dir(path: str | os.PathLike) -> epath.Path:
    """Creates the directory `path` (and its parents) if missing; returns it as `as_path` does."""
    result = as_path(path)
    result.mkdir(parents=True, exist_ok=True)
    return result


def exists(path: str | os.PathLike) -> bool:
    """Whether a file or directory exists at `path` (local or URL)."""
    return as_path(path).exists()
