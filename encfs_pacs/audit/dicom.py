"""Which patient and study a file belongs to, for audit records: read from its DICOM header.

Read once per file version and cached by (device, inode, size, mtime), so a PACS reading the
same image a thousand times costs one header parse. Only the header is read (pydicom stops
before the pixel data and is asked for four tags), through the volume's decrypting reader —
never from the PACS's own request, so its reads are neither slowed nor disturbed.
"""

from __future__ import annotations

import functools
import io
import logging
import os
import threading
import warnings
from collections import OrderedDict
from typing import Any

log = logging.getLogger("encfs_pacs.audit")

AUDITED_TAGS = ("PatientID", "StudyInstanceUID", "SOPInstanceUID", "Modality")
PREAMBLE_BYTES = 132  # 128-byte preamble + "DICM"
CACHE_ENTRIES = 65_536
# Files up to this size (a CT or MR image) are decrypted whole and parsed in memory; larger
# ones (CR, mammography, multi-frame) are streamed so that only their header is read.
WHOLE_FILE_BYTES = 1 << 20
FileKey = tuple[int, int, int, int, int]


class _PlainReader(io.RawIOBase):
    """A read-only, seekable file object over a volume's decrypting file handle."""

    def __init__(self, handle: Any, size: int, name: str) -> None:
        self._handle, self._size, self._position = handle, size, 0
        self.name = name  # pydicom asks a file object for its name

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._size}[whence]
        self._position = max(0, base + offset)
        return self._position

    def readinto(self, buffer: Any) -> int:
        data = self._handle.read(len(buffer), self._position)
        buffer[:len(data)] = data
        self._position += len(data)
        return len(data)


def looks_like_dicom(first_bytes: bytes) -> bool:
    return len(first_bytes) >= PREAMBLE_BYTES and first_bytes[128:132] == b"DICM"


def parse_tags(stream: io.BufferedIOBase) -> dict[str, str] | None:
    """The audited tags of a DICOM Part 10 stream, or None if it is not one."""
    # imported lazily: only mounts with an audit trail pay for pydicom
    from pydicom.filereader import read_partial

    if not looks_like_dicom(stream.read(PREAMBLE_BYTES)):
        return None
    stream.seek(0)
    wanted = _audited_tag_numbers()
    last = wanted[-1]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # dcmread(stop_before_pixels=True) would walk every element up to the pixel data;
            # a dataset's elements come in tag order, so none after the last audited tag matters.
            dataset = read_partial(stream, stop_when=lambda tag, vr, length: tag > last,
                                   specific_tags=list(wanted))
    except Exception as exc:  # a damaged header must not break auditing; say so instead
        log.info("DICOM header unreadable: %s", exc)
        return None
    tags = {tag: str(dataset.get(tag)) for tag in AUDITED_TAGS if dataset.get(tag) not in (None, "")}
    return tags or None


@functools.cache
def _audited_tag_numbers() -> tuple[Any, ...]:
    """AUDITED_TAGS as pydicom tags, in tag order (the last one is where a lookup stops)."""
    from pydicom.tag import Tag

    return tuple(sorted(Tag(tag) for tag in AUDITED_TAGS))


class DicomTagCache:
    """Patient/study/instance/modality per file version, read through ``volume``."""

    def __init__(self, volume: Any) -> None:
        self._volume = volume
        self._lock = threading.Lock()
        self._cache: OrderedDict[FileKey, dict[str, str] | None] = OrderedDict()

    def tags(self, path: str) -> dict[str, str] | None:
        """Tags of the regular file at ``path`` (mount path), None if not DICOM or unreadable."""
        try:
            st = os.stat(self._volume.backing_path(path), follow_symlinks=False)
        except (OSError, ValueError):
            return None
        if not _is_regular(st.st_mode):
            return None
        # ctime too: another server on shared storage may rewrite a file within one mtime tick
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        tags = self._read(path)
        with self._lock:
            self._cache[key] = tags
            while len(self._cache) > CACHE_ENTRIES:
                self._cache.popitem(last=False)
        return tags

    def _read(self, path: str) -> dict[str, str] | None:
        try:
            # O_NOATIME: looking up the patient for the audit trail is not an access by a
            # program, and must not change the file's atime (touch -m keeps it, say).
            # No prefetch: most files need only their 132-byte preamble read.
            handle = self._volume.open(path, os.O_RDONLY | os.O_NOATIME, prefetch=False)
        except Exception as exc:  # gone, damaged, a special file: no tags, but never a crash
            log.debug("no DICOM tags for %s: %s", path, exc)
            return None
        try:
            # Most files a non-PACS program writes are not DICOM: sniff the preamble with one
            # read before building the buffered stream pydicom needs.
            if not looks_like_dicom(handle.read(PREAMBLE_BYTES, 0)):
                return None
            size = handle.state.size
            if size <= WHOLE_FILE_BYTES:
                # In memory, pydicom's ~500 tell() calls per header stay in C; through the
                # BufferedReader each of them calls our Python reader's tell() (docs/performance.md).
                return parse_tags(io.BytesIO(handle.read(size, 0)))
            return parse_tags(io.BufferedReader(_PlainReader(handle, size, path), buffer_size=16384))
        except Exception as exc:
            log.info("no DICOM tags for %s: %s", path, exc)
            return None
        finally:
            handle.close()


def _is_regular(mode: int) -> bool:
    import stat

    return stat.S_ISREG(mode)
