"""Where results live: one way to name, join and open every location of an experiment.

A ``Location`` is a local path or a URI that ``pyarrow.fs`` resolves (``s3://``, ``gs://``,
``file://``, ``hdfs://`` ...), the filesystem library Ray Train and Tune use themselves. It stays a
URI until it is opened: ``join`` appends to the URI's *path* and keeps its scheme and query, so

    s3://bucket/exp?endpoint_override=127.0.0.1:9000&scheme=http   joined with   demo, train_runs
    s3://bucket/exp/demo/train_runs?endpoint_override=127.0.0.1:9000&scheme=http

which is the form Ray's ``storage_path``, ``pyarrow.fs.FileSystem.from_uri`` and every raymmft
command accept. Endpoint and credentials come from the query (``endpoint_override``, ``scheme``,
``region``, ``access_key`` ...) or from the environment (``AWS_ENDPOINT_URL``,
``AWS_ACCESS_KEY_ID`` ..., as pyarrow reads them). Ray reports paths *on* the filesystem
(``bucket/exp/demo/...``, without scheme or query); ``with_fs_path`` turns them back into
locations.

Pure: pyarrow only (no torch, no Ray), so the results layer can use it.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import stat
import unicodedata
import uuid
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit

from raymmft.errors import StorageError, first_line

MAX_NAME_BYTES = 255
# Stores where a directory is a key prefix: nothing to create before writing under it.
OBJECT_STORES = frozenset({"s3", "gs", "gcs"})
# Query parameters whose values never appear in messages.
SECRET_PARAMS = frozenset({"secret_key", "session_token", "access_key"})


def check_name(name: str, what: str = "experiment name") -> str:
    """A name is one path segment: non-empty, no ``/`` or ``\\``, not ``.`` or ``..``, no control
    character (NUL, newline, ...), no white space around it, at most 255 bytes (the limit of a
    file name on every common filesystem and of an S3 key part). Raises ``ValueError`` with the
    rule that ``name`` breaks."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"{what} is empty")
    if "/" in name or "\\" in name:
        raise ValueError(f"{what} {name!r} contains a path separator; give a name, not a path")
    if name in (".", ".."):
        raise ValueError(f"{what} {name!r} is not a name")
    control = next((c for c in name if unicodedata.category(c) == "Cc"), None)
    if control is not None:
        raise ValueError(f"{what} {name!r} contains a control character ({control!r})")
    if name != name.strip():
        raise ValueError(f"{what} {name!r} starts or ends with white space")
    size = len(name.encode("utf-8"))
    if size > MAX_NAME_BYTES:
        raise ValueError(f"{what} is {size} bytes long; at most {MAX_NAME_BYTES} are allowed")
    return name


def resolve_local(value: str, base: str | os.PathLike | None) -> str:
    """A relative local path made absolute against ``base`` (the directory a command ran in): the
    trials that read it run in other processes with other working directories. A URI
    (``s3://...``, ``file://...``), an absolute path, or no ``base`` leave ``value`` as it is."""
    if base is None or "://" in value or os.path.isabs(value):
        return value
    return os.path.normpath(os.path.join(os.fspath(base), os.path.expanduser(value)))


def check_output(
    location: str | Location, flag: str, *, directory: bool, empty: bool = False
) -> Location:
    """An output location given on the command line, checked before any work: a ``directory``
    (or a file) that can be created here, is not the other kind, is writable, and with ``empty``
    holds nothing yet. Raises ``StorageError`` naming the flag."""
    location = Location.parse(location)
    if not location.is_local:
        if not directory and location.is_dir():
            raise StorageError(f"{flag} {location}: is a directory, not a file")
        return location
    path = location.local_path
    kind = "directory" if directory else "file"
    if path.exists():
        if path.is_dir() != directory:
            other = "file" if directory else "directory"
            raise StorageError(f"{flag} {location}: is a {other}, not a {kind}")
        if empty and directory and any(path.iterdir()):
            held = ", ".join(sorted(p.name for p in path.iterdir())[:3])
            raise StorageError(
                f"{flag} {location}: the directory is not empty (it holds {held}); give a new or "
                f"empty one"
            )
        writable = path if directory else path.parent
    else:
        writable = path.parent
        while not writable.exists():
            writable = writable.parent
        if not writable.is_dir():
            raise StorageError(f"{flag} {location}: cannot create it ({writable} is a file)")
    if not os.access(writable, os.W_OK | os.X_OK):
        raise StorageError(f"{flag} {location}: not writable ({writable} is not writable)")
    return location


def untrusted(path: Path) -> str | None:
    """Why a local file or directory could have been changed by someone else (it belongs to
    another user, or others may write it), or ``None``."""
    info = path.lstat()
    if info.st_uid != os.geteuid():
        return f"belongs to another user (uid {info.st_uid})"
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"can be written by other users (mode {oct(stat.S_IMODE(info.st_mode))})"
    return None


_FILESYSTEMS: dict[tuple[str, str, str], tuple] = {}


def _filesystem(location: Location):
    """``(filesystem, path of the URI root on it)`` for the location's scheme, host/bucket and
    query; resolved once per process (an S3 filesystem looks up its bucket's region)."""
    import pyarrow.fs as pafs

    key = (location.scheme, location.netloc, location.query)
    if key not in _FILESYSTEMS:
        if not location.scheme:
            _FILESYSTEMS[key] = (pafs.LocalFileSystem(), "")
        else:
            try:
                fs, path = pafs.FileSystem.from_uri(location.uri)
            except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
                raise StorageError(f"cannot open {location}: {first_line(exc, 300)}") from None
            path = path.rstrip("/")
            if location.path and not path.endswith(location.path.rstrip("/")):
                raise StorageError(f"cannot map {location} onto its filesystem ({path})")
            root = path[: len(path) - len(location.path)] if location.path else path
            _FILESYSTEMS[key] = (fs, root)
    return _FILESYSTEMS[key]


def _redact(uri: str) -> str:
    base, sep, query = uri.partition("?")
    if not sep:
        return uri
    pairs = [(k, "***" if k in SECRET_PARAMS else v) for k, v in parse_qsl(query, True)]
    return f"{base}?{urlencode(pairs, safe=':/*')}"


class Location:
    """A local path (absolute, resolved) or a URI: ``scheme://netloc/path?query``."""

    __slots__ = ("scheme", "netloc", "path", "query")

    def __init__(self, scheme: str, netloc: str, path: str, query: str = ""):
        self.scheme, self.netloc, self.path, self.query = scheme, netloc, path, query

    @classmethod
    def parse(cls, location: str | os.PathLike | Location) -> Location:
        """A path or URI as given by a user, a config or Ray. A local path is made absolute."""
        if isinstance(location, Location):
            return location
        text = os.fspath(location)
        if not text.strip():
            raise StorageError("empty storage location")
        if "://" not in text:
            return cls("", "", str(Path(text).expanduser().resolve()))
        parts = urlsplit(text)
        scheme = parts.scheme.lower()
        if not scheme or parts.fragment:
            raise StorageError(f"cannot parse storage location {_redact(text)}")
        path = parts.path
        if scheme == "file":
            if parts.netloc not in ("", "localhost"):
                raise StorageError(f"file:// location {text} names a host; use file:///abs/path")
            if not path.startswith("/"):
                raise StorageError(f"file:// location {text} needs an absolute path")
        path = posixpath.normpath(path) if path.strip("/") else ""
        return cls(scheme, parts.netloc, "" if path in ("/", ".") else path, parts.query)

    # ------------------------------------------------------------ forming

    @property
    def is_local(self) -> bool:
        """On this machine's filesystem (a plain path or ``file://``)."""
        return self.scheme in ("", "file")

    @property
    def uri(self) -> str:
        """The full form: an absolute local path, or ``scheme://netloc/path?query``."""
        if not self.scheme:
            return self.path
        return f"{self.scheme}://{self.netloc}{self.path}" + (
            f"?{self.query}" if self.query else ""
        )

    def __str__(self) -> str:
        """For messages: the URI with secret query values replaced by ``***``."""
        return _redact(self.uri)

    def __repr__(self) -> str:
        return f"Location({str(self)!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, Location) and self.uri == other.uri

    def __hash__(self) -> int:
        return hash(self.uri)

    def join(self, *parts: str) -> Location:
        """This location with ``parts`` appended to its path (each may hold ``/``-separated
        segments; an empty, ``.`` or ``..`` segment is an error): scheme and query kept."""
        segments = []
        for part in parts:
            for segment in str(part).split("/"):
                if segment in ("", ".", ".."):
                    raise StorageError(f"cannot join {part!r} to {self}: not a relative path")
                segments.append(segment)
        if not segments:
            return self
        return Location(self.scheme, self.netloc, "/".join([self.path, *segments]), self.query)

    @property
    def name(self) -> str:
        """The last path segment (the bucket for a bucket root)."""
        return posixpath.basename(self.path) if self.path else self.netloc

    @property
    def parent(self) -> Location:
        if not self.path or self.path == "/":
            raise StorageError(f"{self} has no parent")
        head = posixpath.dirname(self.path)
        if self.scheme and head == "/":
            head = ""
        return Location(self.scheme, self.netloc, head, self.query)

    def with_fs_path(self, fs_path: str) -> Location:
        """The location, on this location's filesystem, of ``fs_path`` (a path as pyarrow and Ray
        report it: ``bucket/key`` for S3/GCS). A full URI or local path given instead is parsed."""
        if "://" in fs_path or not self.scheme:
            return Location.parse(fs_path)
        _, root = _filesystem(self)
        stripped = fs_path.rstrip("/")
        if root and stripped != root and not stripped.startswith(root + "/"):
            raise StorageError(f"{fs_path} is not on the filesystem of {self}")
        rest = stripped[len(root) :]
        return Location(self.scheme, self.netloc, rest if rest != "/" else "", self.query)

    # ------------------------------------------------------------ opening

    @property
    def filesystem(self):
        """The ``pyarrow.fs.FileSystem`` that holds this location (created once per bucket)."""
        return _filesystem(self)[0]

    @property
    def fs_path(self) -> str:
        """This location's path on ``filesystem`` (what pyarrow calls take)."""
        if not self.scheme:
            return self.path
        root = _filesystem(self)[1]
        return f"{root}{self.path}" if root else (self.path or "/")

    @property
    def local_path(self) -> Path:
        if not self.is_local:
            raise StorageError(f"{self} is not a local path")
        return Path(self.path)

    def _info(self):
        try:
            return self.filesystem.get_file_info(self.fs_path)
        except (OSError, ValueError) as exc:
            raise StorageError(f"cannot read {self}: {first_line(exc, 300)}") from None

    def exists(self) -> bool:
        import pyarrow.fs as pafs

        return self._info().type != pafs.FileType.NotFound

    def is_dir(self) -> bool:
        import pyarrow.fs as pafs

        return self._info().type == pafs.FileType.Directory

    def is_file(self) -> bool:
        import pyarrow.fs as pafs

        return self._info().type == pafs.FileType.File

    def entries(self) -> list:
        """The ``pyarrow.fs.FileInfo`` of each entry directly in this directory ([] if none)."""
        import pyarrow.fs as pafs

        try:
            selector = pafs.FileSelector(self.fs_path, allow_not_found=True)
            return self.filesystem.get_file_info(selector)
        except (OSError, ValueError) as exc:
            raise StorageError(f"cannot list {self}: {first_line(exc, 300)}") from None

    def children(self) -> dict[str, Location]:
        """``{name: location}`` of the entries directly in this directory."""
        return {info.base_name: self.join(info.base_name) for info in self.entries()}

    @property
    def is_object_store(self) -> bool:
        return self.scheme in OBJECT_STORES

    def mkdir(self) -> Location:
        """Create the directory (and its parents); on object storage, where a directory is a key
        prefix that exists once something is written under it, nothing is created."""
        if self.is_object_store:
            return self
        try:
            self.filesystem.create_dir(self.fs_path, recursive=True)
        except (OSError, ValueError) as exc:
            raise StorageError(f"cannot create {self}: {first_line(exc, 300)}") from None
        return self

    def read_bytes(self) -> bytes:
        try:
            with self.filesystem.open_input_stream(self.fs_path) as f:
                return f.read()
        except FileNotFoundError:
            raise StorageError(f"not found: {self}") from None
        except (OSError, ValueError) as exc:
            raise StorageError(f"cannot read {self}: {first_line(exc, 300)}") from None

    def read_text(self) -> str:
        return self.read_bytes().decode("utf-8", errors="replace")

    def write_bytes(self, data: bytes) -> Location:
        """Write ``data`` so that a reader sees the old file or the whole new one, never a part:
        a temporary file renamed into place on a local filesystem; on object storage an upload
        becomes visible only when complete."""
        fs = self.filesystem
        try:
            if not self.is_object_store:
                fs.create_dir(posixpath.dirname(self.fs_path), recursive=True)
            target = self.fs_path
            if self.is_local:
                target = f"{self.fs_path}.{uuid.uuid4().hex[:8]}.tmp"
            try:
                with fs.open_output_stream(target) as f:
                    f.write(data)
            except BaseException:
                if target != self.fs_path:  # a full disk leaves no partial temporary file
                    with contextlib.suppress(OSError):
                        fs.delete_file(target)
                raise
            if target != self.fs_path:
                fs.move(target, self.fs_path)
        except (OSError, ValueError) as exc:
            raise StorageError(f"cannot write {self}: {first_line(exc, 300)}") from None
        return self

    def write_text(self, text: str) -> Location:
        return self.write_bytes(text.encode("utf-8"))

    def delete_file(self) -> None:
        try:
            self.filesystem.delete_file(self.fs_path)
        except (OSError, ValueError) as exc:
            raise StorageError(f"cannot delete {self}: {first_line(exc, 300)}") from None

    def upload_dir(self, local_dir: str | os.PathLike) -> None:
        """Copy a local directory's files into this directory (overwriting)."""
        import pyarrow.fs as pafs

        try:
            self.mkdir()
            pafs.copy_files(
                os.fspath(local_dir),
                self.fs_path,
                source_filesystem=pafs.LocalFileSystem(),
                destination_filesystem=self.filesystem,
            )
        except (OSError, ValueError) as exc:
            raise StorageError(
                f"cannot copy {local_dir} to {self}: {first_line(exc, 300)}"
            ) from None

    def download_dir(self, local_dir: str | os.PathLike) -> None:
        """Copy this directory's files into a local directory."""
        import pyarrow.fs as pafs

        try:
            pafs.copy_files(
                self.fs_path,
                os.fspath(local_dir),
                source_filesystem=self.filesystem,
                destination_filesystem=pafs.LocalFileSystem(),
            )
        except (OSError, ValueError) as exc:
            raise StorageError(
                f"cannot copy {self} to {local_dir}: {first_line(exc, 300)}"
            ) from None
