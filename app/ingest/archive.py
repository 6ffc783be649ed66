"""Safe extraction of uploaded .zip / .tar(.gz) archives.

Uploads are untrusted: members are checked for path traversal, links and device files, and sizes are
checked both from the archive's own declarations and by counting bytes while writing, so a zip bomb
or a lying header cannot fill the disk.
"""

from __future__ import annotations

import lzma
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import IO

from app.ingest.errors import DatasetFormatError, DatasetTooLargeError
from app.ingest.types import ParseLimits

MAX_ARCHIVE_MEMBERS = 10_000
_CHUNK = 1024 * 1024
_ZIP_SUFFIXES = (".zip",)
_TAR_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
# Errors the decompressors raise on damaged input (gzip.BadGzipFile is an OSError, handled separately).
_CORRUPT_ERRORS: tuple[type[BaseException], ...] = (
    zipfile.BadZipFile,
    tarfile.TarError,
    zlib.error,
    lzma.LZMAError,
    EOFError,
)


def _kind(archive: Path, file_label: str) -> str:
    for name in (file_label.lower(), archive.name.lower()):
        if name.endswith(_ZIP_SUFFIXES):
            return "zip"
        if name.endswith(_TAR_SUFFIXES):
            return "tar"
    raise DatasetFormatError(file_label, "unsupported archive type: expected .zip, .tar.gz, .tgz or .tar")


def _safe_parts(name: str, file_label: str) -> tuple[str, ...]:
    """Validate a member name and return its path components ('.' and empty components dropped)."""
    if "\x00" in name:
        raise DatasetFormatError(file_label, "member name contains a NUL byte", member=name)
    normalized = name.replace("\\", "/")
    if normalized.startswith("/") or (len(normalized) >= 2 and normalized[0].isalpha() and normalized[1] == ":"):
        raise DatasetFormatError(file_label, "absolute paths are not allowed", member=name)
    parts = tuple(part for part in PurePosixPath(normalized).parts if part not in ("", "."))
    if ".." in parts:
        raise DatasetFormatError(file_label, "'..' path components are not allowed", member=name)
    return parts


class _Budget:
    """Counts bytes actually written across all members against the limit."""

    def __init__(self, file_label: str, limit: int) -> None:
        self.file_label = file_label
        self.limit = limit
        self.used = 0

    def copy(self, source: IO[bytes], target: Path, member: str, declared: int) -> None:
        written = 0
        with target.open("wb") as out:
            while chunk := source.read(_CHUNK):
                written += len(chunk)
                self.used += len(chunk)
                if self.used > self.limit:
                    raise DatasetTooLargeError(
                        self.file_label,
                        f"uncompressed content exceeds the limit of {self.limit} bytes",
                        member=member,
                    )
                if written > declared:
                    raise DatasetFormatError(
                        self.file_label, "member holds more data than its header declares", member=member
                    )
                out.write(chunk)


def _target(dest: Path, parts: tuple[str, ...], file_label: str, member: str) -> Path:
    target = dest.joinpath(*parts)
    # Defence in depth against anything _safe_parts missed (e.g. a pre-existing symlink in dest).
    if not target.resolve().is_relative_to(dest.resolve()):
        raise DatasetFormatError(file_label, "member path escapes the extraction folder", member=member)
    return target


def _check_totals(file_label: str, count: int, declared: int, last_member: str, limits: ParseLimits) -> None:
    if count > MAX_ARCHIVE_MEMBERS:
        raise DatasetTooLargeError(file_label, f"more than {MAX_ARCHIVE_MEMBERS} members", member=last_member)
    if declared > limits.max_bytes:
        raise DatasetTooLargeError(
            file_label,
            f"declared uncompressed size exceeds the limit of {limits.max_bytes} bytes",
            member=last_member,
        )


def _write_member(
    dest: Path,
    parts: tuple[str, ...],
    is_dir: bool,
    opener: Callable[[], IO[bytes]],
    budget: _Budget,
    member: str,
    declared: int,
) -> None:
    if not parts:
        return
    target = _target(dest, parts, budget.file_label, member)
    try:
        if is_dir:
            target.mkdir(parents=True, exist_ok=True)
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        with opener() as source:
            budget.copy(source, target, member, declared)
    except (FileExistsError, NotADirectoryError, IsADirectoryError) as exc:
        raise DatasetFormatError(
            budget.file_label, f"member clashes with another member ({exc.strerror})", member=member
        ) from None


def _extract_zip(archive: Path, file_label: str, dest: Path, limits: ParseLimits) -> None:
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        plan: list[tuple[zipfile.ZipInfo, tuple[str, ...]]] = []
        declared = 0
        for count, info in enumerate(infos, start=1):
            parts = _safe_parts(info.filename, file_label)
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                raise DatasetFormatError(file_label, "symbolic links are not allowed", member=info.filename)
            if info.flag_bits & 0x1:
                raise DatasetFormatError(file_label, "encrypted members are not supported", member=info.filename)
            if not info.is_dir():
                declared += info.file_size
            _check_totals(file_label, count, declared, info.filename, limits)
            plan.append((info, parts))
        budget = _Budget(file_label, limits.max_bytes)
        for info, parts in plan:
            _write_member(
                dest,
                parts,
                info.is_dir(),
                lambda info=info: zf.open(info),
                budget,
                info.filename,
                info.file_size,
            )


def _extract_tar(archive: Path, file_label: str, dest: Path, limits: ParseLimits) -> None:
    with tarfile.open(archive, "r:*") as tf:
        plan: list[tuple[tarfile.TarInfo, tuple[str, ...]]] = []
        declared = 0
        # Iterate rather than getmembers(), so a tar with millions of headers stops at the limit.
        for count, info in enumerate(tf, start=1):
            parts = _safe_parts(info.name, file_label)
            if info.issym() or info.islnk():
                raise DatasetFormatError(file_label, "links are not allowed", member=info.name)
            if info.issparse() or not (info.isfile() or info.isdir()):
                raise DatasetFormatError(file_label, "only regular files and folders are allowed", member=info.name)
            if info.isfile():
                declared += info.size
            _check_totals(file_label, count, declared, info.name, limits)
            plan.append((info, parts))
        budget = _Budget(file_label, limits.max_bytes)
        for info, parts in plan:

            def opener(info: tarfile.TarInfo = info) -> IO[bytes]:
                handle = tf.extractfile(info)
                if handle is None:  # pragma: no cover - only for non-regular members, rejected above
                    raise DatasetFormatError(file_label, "member has no data", member=info.name)
                return handle

            _write_member(dest, parts, info.isdir(), opener, budget, info.name, info.size)


def extract_archive(archive: Path, file_label: str, dest: Path, limits: ParseLimits) -> None:
    """Extract an uploaded archive into dest, refusing unsafe or oversized content.

    On error dest may hold a partial extraction; the caller owns dest and should delete it.
    """
    if not archive.is_file():
        raise DatasetFormatError(file_label, "file is missing")
    size = archive.stat().st_size
    if size > limits.max_bytes:
        raise DatasetTooLargeError(file_label, f"archive is {size} bytes, the limit is {limits.max_bytes}")
    kind = _kind(archive, file_label)
    dest.mkdir(parents=True, exist_ok=True)
    try:
        if kind == "zip":
            _extract_zip(archive, file_label, dest, limits)
        else:
            _extract_tar(archive, file_label, dest, limits)
    except DatasetFormatError:
        raise
    except _CORRUPT_ERRORS as exc:
        raise DatasetFormatError(file_label, f"corrupt or unreadable archive ({exc})") from None
    except NotImplementedError as exc:  # e.g. an unsupported zip compression method
        raise DatasetFormatError(file_label, f"unsupported archive feature ({exc})") from None
    except OSError as exc:
        # gzip.BadGzipFile and friends; genuine disk errors (ENOSPC) propagate unchanged.
        if exc.errno is None:
            raise DatasetFormatError(file_label, f"corrupt or unreadable archive ({exc})") from None
        raise
