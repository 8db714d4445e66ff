"""A layer's tar, read entry by entry from a forward-only stream.

``tarfile`` parses the headers (with a fast path for the headers tar writers make)
and nothing else: file data goes from the stream's chunks straight to the files
(:meth:`TarSource.copy_to`), and nothing is kept per entry, so a layer of millions
of entries takes no more memory than one of ten. The end of the archive is checked
as Go's archive/tar would see it (:func:`check_tar_trailer`).
"""

from __future__ import annotations

import os
import re
import tarfile
import zlib
from collections.abc import Callable, Iterator
from typing import IO, Self, cast

from .._fd import CHUNK_SIZE, write_all
from ..errors import LayerFormatError, LimitExceededError, TarTrailerError
from .compression import Readable, looks_like_tar

__all__ = ["LayerTar", "LayerTarInfo", "TarSource", "check_tar_trailer", "open_tar"]

_BLOCK = tarfile.BLOCKSIZE
_EXTENDED = frozenset(
    {
        tarfile.XHDTYPE,
        tarfile.XGLTYPE,
        tarfile.SOLARIS_XHDTYPE,
        tarfile.GNUTYPE_LONGNAME,
        tarfile.GNUTYPE_LONGLINK,
    }
)
#: How tarfile says that an archive ended well: end-of-archive blocks, or no more data.
_CLEAN_END: tuple[type[Exception], ...] = (
    getattr(tarfile, "EOFHeaderError"),  # noqa: B009 (missing from typeshed)
    getattr(tarfile, "EmptyHeaderError"),  # noqa: B009
)
#: The numbers of a tar header from mode to checksum (offsets 100 to 156) as tar
#: writers put them: zero-padded octal ending in a NUL, the checksum also as six
#: digits, a NUL and a space.
_PLAIN = re.compile(
    rb"([0-7]{7})\0([0-7]{7})\0([0-7]{7})\0([0-7]{11})\0([0-7]{11})\0([0-7]{6}[0-7\0])[\0 ]"
)
#: The device numbers (offsets 329 to 345): zero-padded octal, or all NULs.
_DEVICES = re.compile(rb"(?:\0{8}|([0-7]{7})\0)(?:\0{8}|([0-7]{7})\0)")


def _unsigned_checksum(buf: bytes | bytearray) -> int:
    """Return the header checksum tar writers compute: the unsigned sum of the
    block's bytes with the checksum field counted as eight spaces."""
    field = sum(buf[148:156])
    if buf.count(0) >= 256:
        # At most 256 non-zero bytes sum to less than adler32's modulus (65521):
        # its low half is then one more than the sum, computed in C.
        return (zlib.adler32(buf) & 0xFFFF) - 1 - field + 256
    return sum(buf) - field + 256


class LayerTarInfo(tarfile.TarInfo):
    """A TarInfo that parses common headers fast, bounds extended headers, and
    tells its :class:`LayerTar` why the archive ended."""

    @classmethod
    def frombuf(cls, buf: bytes | bytearray, encoding: str, errors: str) -> Self:
        """Parse a header block: tarfile's parse, with a fast path for common headers.

        The fast path takes a block whose numbers are zero-padded octal as tar
        writers put them (see _PLAIN), with a valid unsigned checksum and no old GNU
        sparse map, and gives what tarfile would; anything else goes to tarfile.
        """
        plain = _PLAIN.match(buf, 100) if len(buf) == _BLOCK else None
        devices = _DEVICES.match(buf, 329) if plain is not None else None
        if devices is None or buf[156:157] == tarfile.GNUTYPE_SPARSE:
            return super().frombuf(buf, encoding, errors)
        assert plain is not None
        mode, uid, gid, size, mtime, chksum = plain.groups()
        if int(chksum.rstrip(b"\0"), 8) != _unsigned_checksum(buf):
            return super().frombuf(buf, encoding, errors)
        obj = cls()
        obj.name = name = buf[0:100].split(b"\0", 1)[0].decode(encoding, errors)
        obj.mode = int(mode, 8)
        obj.uid = int(uid, 8)
        obj.gid = int(gid, 8)
        obj.size = int(size, 8)
        obj.mtime = int(mtime, 8)
        obj.chksum = int(chksum.rstrip(b"\0"), 8)
        obj.type = kind = cast("bytes", buf[156:157])
        obj.linkname = buf[157:257].split(b"\0", 1)[0].decode(encoding, errors)
        obj.uname = buf[265:297].split(b"\0", 1)[0].decode(encoding, errors)
        obj.gname = buf[297:329].split(b"\0", 1)[0].decode(encoding, errors)
        major, minor = devices.groups()
        obj.devmajor = 0 if major is None else int(major, 8)
        obj.devminor = 0 if minor is None else int(minor, 8)
        prefix = buf[345:500].split(b"\0", 1)[0].decode(encoding, errors)
        if kind == tarfile.AREGTYPE and name.endswith("/"):
            obj.type = kind = tarfile.DIRTYPE
        if kind == tarfile.DIRTYPE:
            obj.name = name = name.rstrip("/")
        if prefix and kind not in tarfile.GNU_TYPES:
            obj.name = prefix + "/" + name
        return obj

    @classmethod
    def fromtarfile(cls, tar: tarfile.TarFile) -> Self:
        """Read the next header; a header error is noted on the LayerTar."""
        try:
            return super().fromtarfile(tar)
        except tarfile.HeaderError as exc:
            if isinstance(tar, LayerTar):
                tar.ended_by = exc
            raise

    def _proc_member(self, tar: tarfile.TarFile) -> tarfile.TarInfo:
        # tarfile's hook for extended headers, whose data it reads into memory.
        if self.type in _EXTENDED and isinstance(tar, LayerTar) and self.size > tar.max_header:
            raise LimitExceededError(
                f"extended tar header of {self.size} bytes (limit {tar.max_header})",
                limit="max_header_bytes",
                value=tar.max_header,
            )
        result: tarfile.TarInfo = tarfile.TarInfo._proc_member(self, tar)  # type: ignore[attr-defined]
        return result


class LayerTar(tarfile.TarFile):
    """A layer's tar over a :class:`TarSource`: :meth:`entries` and the end checks."""

    def __init__(self, source: TarSource, *, max_header: int) -> None:
        #: Bytes of one PAX or GNU extended header, at most.
        self.max_header = max_header
        #: The header error that ended the archive (end blocks, no more data...).
        self.ended_by: tarfile.HeaderError | None = None
        self.source = source
        super().__init__(
            fileobj=cast("IO[bytes]", source),
            mode="r",
            tarinfo=LayerTarInfo,
            encoding="utf-8",
            errors="surrogateescape",
        )

    def entries(self) -> Iterator[tarfile.TarInfo]:
        """Yield the entries, then check how the archive ended.

        Raises:
            LayerFormatError: a malformed header, or a tar that goes on after its end.
            LimitExceededError: an extended header over ``max_header``.
        """
        while True:
            try:
                member = self.next()
            except tarfile.TarError as exc:
                raise LayerFormatError(f"malformed tar stream: {exc}") from None
            if member is None:
                break
            self.members.clear()  # type: ignore[attr-defined]
            yield member
        end = self.ended_by
        if end is not None and not isinstance(end, _CLEAN_END):
            raise LayerFormatError(f"malformed tar header at offset {self.offset}: {end}")
        if isinstance(end, _CLEAN_END[0]):  # a zero block: what follows it?
            check_tar_trailer(self.source.read, self.offset)

    def stored_size(self, member: tarfile.TarInfo) -> int:
        """Return the bytes ``member`` takes in the archive after its header (padded)."""
        return self.offset - member.offset_data


def open_tar(source: TarSource, *, max_header: int) -> LayerTar | None:
    """Open the tar of ``source``; None for an empty stream (an empty layer).

    Raises:
        LayerFormatError: the stream is not a tar.
        LimitExceededError: the first header is an extended header over ``max_header``.
    """
    try:
        return LayerTar(source, max_header=max_header)
    except tarfile.ReadError as exc:
        if source.count != 0:
            raise LayerFormatError(f"not a tar stream: {exc}") from None
        return None


def check_tar_trailer(read: Callable[[int], bytes], offset: int) -> None:
    """Check what follows the zero block that ended a tar at ``offset``, to its end.

    ``read`` reads the stream from just after that block (b"" at its end). A tar ends with two
    zero blocks, and what comes after them is ignored, with one exception:

    * a zero block followed by anything but a second zero block (or the end) is
      refused, as Go's archive/tar (umoci, containers/storage) refuses it;
    * a valid tar header after the two zero blocks is refused too: readers that
      skip zero blocks (``tar --ignore-zeros``) would extract entries that readers
      stopping at the end marker hide, so the layer means different trees to
      different tools. Other data (padding, junk) is ignored.

    Raises:
        TarTrailerError: see above.
    """
    position = offset + _BLOCK
    pending = b""
    blocks = 0
    while True:
        chunk = read(CHUNK_SIZE)
        if not chunk:
            break
        pending += chunk
        usable = len(pending) - len(pending) % _BLOCK
        if usable and pending.count(0, 0, usable) == usable:
            blocks += usable // _BLOCK
        else:
            for start in range(0, usable, _BLOCK):
                block = pending[start : start + _BLOCK]
                _check_trailer_block(block, blocks, position + start)
                blocks += 1
        position += usable
        pending = pending[usable:]
    if pending and blocks == 0 and pending.count(0) != len(pending):
        _check_trailer_block(pending, 0, position)


def _check_trailer_block(block: bytes, index: int, offset: int) -> None:
    if block.count(0) == len(block):
        return
    if index == 0:
        raise TarTrailerError(
            f"the tar goes on after a single end-of-archive block: data at offset {offset}"
            " where a second zero block or the end should be",
            offset=offset,
        )
    if len(block) == _BLOCK and looks_like_tar(block):
        raise TarTrailerError(
            f"a tar header at offset {offset}, after the end-of-archive blocks: tools"
            " that read past the end marker would extract entries that others hide",
            offset=offset,
        )


class TarSource:
    """A layer's tar bytes for tarfile: forward only, and counted.

    tarfile reads headers with :meth:`read` and skips padding with :meth:`seek`
    (forward only); file data goes from the stream's chunks straight to the files
    (:meth:`copy_to`), without the copies of tarfile's own stream buffer. Every chunk
    taken from the stream is counted and passed to ``charge`` (which may raise, to
    stop at a limit).
    """

    def __init__(self, stream: Readable, charge: Callable[[int], None]) -> None:
        self._stream = stream
        self._charge = charge
        self._chunk = b""
        self._view = memoryview(b"")
        self._at = 0  # read offset in the chunk
        self._pos = 0  # stream offset of the chunk's read offset
        #: Bytes taken from the stream.
        self.count = 0

    def _more(self) -> bool:
        data = self._stream.read(CHUNK_SIZE)
        if not data:
            return False
        self.count += len(data)
        self._charge(len(data))
        self._chunk = data
        self._view = memoryview(data)
        self._at = 0
        return True

    def tell(self) -> int:
        """Return the offset in the layer's tar."""
        return self._pos

    def read(self, size: int = -1, /) -> bytes:
        """Return up to ``size`` bytes (fewer only at the end), all that is left when negative."""
        at = self._at
        end = at + size
        if size >= 0 and end <= len(self._chunk):
            self._at = end
            self._pos += size
            return self._chunk[at:end]
        pieces = []
        wanted = size if size >= 0 else 1 << 62
        while wanted:
            available = len(self._chunk) - self._at
            if not available:
                if not self._more():
                    break
                continue
            take = min(available, wanted)
            pieces.append(self._chunk[self._at : self._at + take])
            self._at += take
            self._pos += take
            wanted -= take
        return b"".join(pieces)

    def seek(self, offset: int, whence: int = os.SEEK_SET, /) -> int:
        """Skip forward to ``offset`` (or to the end, if it comes first).

        Raises:
            tarfile.StreamError: ``offset`` is behind the current one.
        """
        if whence != os.SEEK_SET or offset < self._pos:
            raise tarfile.StreamError("a layer stream cannot seek backwards")
        self._skip(offset - self._pos)
        return self._pos

    def _skip(self, count: int) -> None:
        while count:
            available = len(self._chunk) - self._at
            if not available:
                if not self._more():
                    return
                continue
            take = min(available, count)
            self._at += take
            self._pos += take
            count -= take

    def skip_to_end(self) -> None:
        """Read (and count) whatever is left."""
        self._skip(1 << 62)

    def copy_to(self, fd: int, count: int) -> int:
        """Write the next ``count`` bytes to ``fd``; return how many (fewer at the end)."""
        copied = 0
        while copied < count:
            available = len(self._chunk) - self._at
            if not available:
                if not self._more():
                    break
                continue
            take = min(available, count - copied)
            write_all(fd, self._view[self._at : self._at + take])
            self._at += take
            self._pos += take
            copied += take
        return copied
