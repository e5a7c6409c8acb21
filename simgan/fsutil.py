"""Small filesystem helpers shared by every module that writes to disk (stdlib only; matplotlib for figures, imported
by :func:`atomic_write_figure` when it is called).

Every file simgan writes goes through :func:`atomic_write_bytes`: the bytes land in a temporary file in the
same directory, are flushed to disk, and only then replace the target with ``os.replace``. A reader therefore
sees either the old file or the complete new one, never a half-written file, even if the writer is killed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

TMP_PREFIX = ".tmp-"


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file in the same directory + ``os.replace``)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX + path.name + ".", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        # Never leave a temp file behind, whatever interrupted us (KeyboardInterrupt included).
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_figure(figure: Any, path: str | os.PathLike, dpi: int = 110) -> None:
    """Render a matplotlib ``figure`` as PNG, write it atomically and close it (matplotlib is imported only
    here, by whoever already made the figure)."""
    import io

    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    plt.close(figure)
    atomic_write_bytes(path, buffer.getvalue())


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as pretty, key-sorted JSON atomically (deterministic bytes for the same object)."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def remove_temp_files(directory: str | os.PathLike) -> int:
    """Delete temp files left by writers that were killed mid-write; returns how many were removed."""
    removed = 0
    for p in Path(directory).glob(TMP_PREFIX + "*"):
        p.unlink(missing_ok=True)
        removed += 1
    return removed
