"""One path layer for run folders: local paths and object stores (gs://) through `etils.epath`.

epath is what Orbax already writes checkpoints with, so logs and checkpoints of a run share one client and one set
of credentials; for gs:// it goes through fsspec's gcsfs, which honours STORAGE_EMULATOR_HOST. Local paths keep
plain `os` semantics (appends, atomic renames). Functions take and return `str`.
"""

from __future__ import annotations

import os
import posixpath
import uuid

from etils import epath


def is_remote(path: str) -> bool:
  return "://" in str(path)


def join(base: str, *names: str) -> str:
  if is_remote(base):
    return posixpath.join(str(base).rstrip("/"), *names)
  return os.path.join(base, *names)


def exists(path: str) -> bool:
  return epath.Path(path).exists()


def is_dir(path: str) -> bool:
  return epath.Path(path).is_dir()


def listdir(path: str) -> list[str]:
  """Names in a folder; [] when it does not exist (object stores have no empty folders)."""
  p = epath.Path(path)
  try:
    return sorted(c.name for c in p.iterdir())
  except (FileNotFoundError, NotADirectoryError):
    return []


def makedirs(path: str) -> None:
  epath.Path(path).mkdir(parents=True, exist_ok=True)


def read_text(path: str) -> str:
  return epath.Path(path).read_text()


def write_text(path: str, text: str) -> None:
  """Replaces the file whole (on an object store an upload is atomic: readers see the old or the new object)."""
  if is_remote(path):
    epath.Path(path).write_text(text)
    return
  with open(path, "w") as f:
    f.write(text)


def write_bytes(path: str, data: bytes) -> None:
  if is_remote(path):
    epath.Path(path).write_bytes(data)
  else:
    with open(path, "wb") as f:
      f.write(data)


def remove(path: str) -> None:
  epath.Path(path).unlink(missing_ok=True)


def rename(src: str, dst: str) -> None:
  """A folder or file to a new name. An object store has no rename: each object is copied, then the originals are
  deleted (server-side copies; nothing is deleted before every copy succeeded)."""
  if not is_remote(src):
    os.rename(src, dst)
    return
  import fsspec

  fs, src_path = fsspec.core.url_to_fs(src)
  dst_path = fsspec.core.url_to_fs(dst)[1]
  recursive = fs.isdir(src_path)
  fs.copy(src_path, dst_path, recursive=recursive)
  fs.rm(src_path, recursive=recursive)


def problem(path: str) -> str | None:
  """Why `path` (a run folder) cannot be written, in one line, or None. Writes and removes a probe object, so a
  missing bucket, missing credentials or a read-only folder is found before any model loads."""
  probe = join(path, f".write-test-{os.getpid()}-{uuid.uuid4().hex[:6]}")
  try:
    if not is_remote(path):
      if os.path.exists(path) and not os.path.isdir(path):
        return f"{path} is a file, not a folder"
      os.makedirs(path, exist_ok=True)
    write_text(probe, "ok")
    remove(probe)
  except OSError as e:
    import errno

    if getattr(e, "errno", None) == errno.ENOSPC:
      raise
    if is_remote(path):
      return f"{path} cannot be written: {_remote_reason(path, e)}"
    return f"{path} is not writable: {e.strerror or e} ({e.filename or path})"
  except Exception as e:  # storage clients raise their own types (auth, HTTP)
    if not is_remote(path):
      raise
    return f"{path} cannot be written: {_remote_reason(path, e)}"
  return None


def _remote_reason(path: str, e: Exception) -> str:
  bucket = str(path).split("://", 1)[1].split("/", 1)[0]
  text = f"{type(e).__name__}: {e}".splitlines()[0][:300]
  if isinstance(e, FileNotFoundError) or "404" in text or "Not Found" in text:
    return f"bucket {bucket!r} does not exist ({text})"
  low = text.lower()
  if any(w in low for w in ("credential", "401", "403", "forbidden", "unauthorized", "permission", "auth")):
    return (f"no credentials with write access to bucket {bucket!r} ({text}); run `gcloud auth application-default "
            f"login` or set GOOGLE_APPLICATION_CREDENTIALS")
  return text
