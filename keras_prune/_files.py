"""Atomic file writes: everything keras_prune writes appears whole or not at all.

A file is written under a temporary name in the target's directory, then
renamed over the target (`os.replace`, atomic on POSIX and Windows). A crash,
a full disk or an exception while writing leaves any earlier file intact and
no temporary behind.

Example:

```python
with atomic_path("model.keras", suffix=".keras") as temporary:
    model.save(temporary)
```
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[str]:
    """Yields a fresh temporary path beside `path`; renames it to `path` on success."""
    target = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(target))
    handle, temporary = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=directory)
    os.close(handle)
    try:
        yield temporary
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(temporary)
        raise


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Writes `data` to `path` atomically, flushed to disk before the rename."""
    with atomic_path(path) as temporary, open(temporary, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())


def write_text(path: str | os.PathLike, text: str) -> None:
    """Writes `text` (UTF-8) to `path` atomically."""
    write_bytes(path, text.encode("utf-8"))
