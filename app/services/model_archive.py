"""Model folders as .tar.gz / .zip archives, written while they are sent.

The standard library's tarfile (stream mode, through gzip) and zipfile (on an unseekable stream it writes data
descriptors) produce the archives; what is written by hand is only the hand-over to the HTTP response: a
thread writes the archive into a small bounded queue of chunks that the response reads, so a model of
any size is sent with a few MiB of memory and nothing is staged on disk.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import queue
import tarfile
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

ARCHIVE_FORMATS = {"tar.gz": "application/gzip", "zip": "application/zip"}
CARD_NAME = "README.md"
_CHUNK = 1 << 20
_QUEUE_CHUNKS = 4
_DONE = object()
_LEVEL = 1  # float weights barely compress at any level, so the fastest one


class _Stopped(Exception):
    """The reader went away (client disconnected): the writer thread stops."""


class _QueueWriter(io.RawIOBase):
    """A write-only, unseekable file whose bytes go to a bounded queue in chunks of about 1 MiB."""

    def __init__(self, chunks: queue.Queue[object], stop: threading.Event) -> None:
        self._chunks = chunks
        self._stop = stop
        self._buffer = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self._buffer += data
        if len(self._buffer) >= _CHUNK:
            self.put(bytes(self._buffer))
            self._buffer.clear()
        return len(data)

    def put(self, item: object) -> None:
        while not self._stop.is_set():
            try:
                self._chunks.put(item, timeout=0.2)
                return
            except queue.Full:
                continue
        raise _Stopped

    def drain(self) -> None:
        if self._buffer:
            self.put(bytes(self._buffer))
            self._buffer.clear()


def model_files(folder: Path) -> list[Path]:
    """Regular files of the folder, sorted; its own README.md is replaced by the generated card."""
    files = [p for p in folder.rglob("*") if p.is_file() and not p.is_symlink()]
    return sorted(p for p in files if p.relative_to(folder).as_posix() != CARD_NAME)


def _write_tar(out: _QueueWriter, folder: Path, root: str, card: bytes) -> None:
    with gzip.GzipFile(fileobj=out, mode="wb", compresslevel=_LEVEL) as gz, tarfile.open(fileobj=gz, mode="w|") as tf:
        info = tarfile.TarInfo(f"{root}/{CARD_NAME}")
        info.size, info.mtime, info.mode = len(card), int(time.time()), 0o644
        tf.addfile(info, io.BytesIO(card))
        for path in model_files(folder):
            tf.add(str(path), arcname=f"{root}/{path.relative_to(folder).as_posix()}", recursive=False)


def _write_zip(out: _QueueWriter, folder: Path, root: str, card: bytes) -> None:
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=_LEVEL, allowZip64=True) as zf:
        zf.writestr(f"{root}/{CARD_NAME}", card)
        for path in model_files(folder):
            zf.write(path, arcname=f"{root}/{path.relative_to(folder).as_posix()}")


def stream_model_archive(folder: Path, root: str, card: str, archive_format: str) -> Iterator[bytes]:
    """The archive of ``folder`` (members under ``root/``, README.md = ``card``), chunk by chunk."""
    write = _write_zip if archive_format == "zip" else _write_tar
    chunks: queue.Queue[object] = queue.Queue(maxsize=_QUEUE_CHUNKS)
    stop = threading.Event()
    out = _QueueWriter(chunks, stop)

    def produce() -> None:
        try:
            write(out, folder, root, card.encode("utf-8"))
            out.drain()
            out.put(_DONE)
        except _Stopped:
            pass
        except BaseException as exc:  # handed to the reader, which raises it in the response
            with contextlib.suppress(_Stopped):
                out.put(exc)

    writer = threading.Thread(target=produce, name="model-archive", daemon=True)
    writer.start()
    try:
        while (item := chunks.get()) is not _DONE:
            if isinstance(item, BaseException):
                raise item
            yield item  # type: ignore[misc]
    finally:
        stop.set()
        writer.join(timeout=5)
