"""Read Qt binary resource bundles (`.rcc`, the output of `rcc --binary`): list their files and return their bytes.

The format, as Qt's `rcc` writes it and `QResource` reads it (all integers big-endian):

    header   "qres", version (u32: 1, 2 or 3), tree offset, data offset, names offset (u32 each),
             and from version 3 the overall flags (u32: which compressions occur)
    tree     one fixed-size record per node, node 0 the root; each: name offset (u32, into the
             names section), flags (u16: 1 zlib, 2 directory, 4 zstd), then
               directory: child count (u32), index of its first child (u32; children are
                          consecutive records, sorted by name hash)
               file:      territory (u16), language (u16), data offset (u32, into the data section)
             and from version 2 the last-modified time (u64, ms since the epoch)
    names    length in UTF-16 units (u16), the name's Qt hash (u32), the UTF-16BE name
    data     payload length (u32), payload; a zlib payload is Qt's qCompress format (the
             uncompressed length as u32, then a zlib stream), a zstd payload a zstd frame

Only the standard library is needed, except for zstd payloads (flag 4, Qt 5.13+), which need
the `zstandard` package (or Python 3.14's `compression.zstd`); gcompris' bundles use zlib.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

MAGIC = b"qres"
COMPRESSED_ZLIB = 0x01
DIRECTORY = 0x02
COMPRESSED_ZSTD = 0x04


def qt_hash(name: str) -> int:
    """Qt's `qt_hash` of a name over its UTF-16 code units: what the tree stores beside each name."""
    units = name.encode("utf-16-be")
    h = 0
    for (unit,) in struct.iter_unpack(">H", units):
        h = ((h << 4) + unit) & 0xFFFFFFFF
        g = h & 0xF0000000
        h ^= g >> 23
        h &= ~g & 0xFFFFFFFF
    return h


@dataclass(frozen=True)
class RccEntry:
    """One file in a bundle: its path inside it ('/gcompris/src/…/cat.webp'), payload position and flags."""

    path: str
    flags: int
    data_offset: int  # absolute byte offset of the payload's length field
    last_modified: int  # ms since the epoch; 0 before format version 2

    @property
    def compression(self) -> str:
        if self.flags & COMPRESSED_ZSTD:
            return "zstd"
        return "zlib" if self.flags & COMPRESSED_ZLIB else "none"


class RccError(ValueError):
    """The bytes are not a readable .rcc bundle."""


class RccFile:
    """A parsed bundle held in memory: `paths()`, `read(path)`, `items()`.

    >>> bundle = RccFile.open("explore_monuments.rcc")
    >>> [p for p in bundle.paths() if p.endswith(".webp")][:1]
    """

    def __init__(self, blob: bytes, source: str = "<bytes>"):
        self.blob = bytes(blob)
        self.source = source
        if len(self.blob) < 20 or self.blob[:4] != MAGIC:
            raise RccError(f"{source} is not a Qt .rcc bundle (no 'qres' magic at byte 0)")
        self.version, self.tree_offset, self.data_offset, self.names_offset = struct.unpack_from(">4I", self.blob, 4)
        if self.version not in (1, 2, 3):
            raise RccError(f"{source}: .rcc format version {self.version} is not one this reader knows (1, 2, 3)")
        self.overall_flags = struct.unpack_from(">I", self.blob, 20)[0] if self.version >= 3 else 0
        self.node_size = 14 if self.version == 1 else 22
        self._entries: dict[str, RccEntry] = {}
        self._walk(0, "", depth=0)

    @classmethod
    def open(cls, path: str | Path) -> RccFile:
        return cls(Path(path).read_bytes(), source=str(path))

    # -- parsing -------------------------------------------------------------------------------
    def _u16(self, at: int) -> int:
        return self._unpack(">H", at)

    def _u32(self, at: int) -> int:
        return self._unpack(">I", at)

    def _unpack(self, fmt: str, at: int) -> int:
        try:
            return struct.unpack_from(fmt, self.blob, at)[0]
        except struct.error:
            raise RccError(f"{self.source}: truncated bundle (read past its end at byte {at})") from None

    def _name(self, offset: int) -> str:
        at = self.names_offset + offset
        length = self._u16(at)
        raw = self.blob[at + 6 : at + 6 + 2 * length]
        if len(raw) != 2 * length:
            raise RccError(f"{self.source}: truncated name at byte {at}")
        return raw.decode("utf-16-be")

    def _walk(self, node: int, prefix: str, depth: int) -> None:
        if depth > 64:
            raise RccError(f"{self.source}: directory tree deeper than 64 levels (a cycle?)")
        at = self.tree_offset + node * self.node_size
        name_offset, flags = self._u32(at), self._u16(at + 4)
        name = "" if node == 0 else self._name(name_offset)
        path = f"{prefix}/{name}" if node else ""
        if flags & DIRECTORY:
            count, first = self._u32(at + 6), self._u32(at + 10)
            for child in range(first, first + count):
                if child <= node:
                    raise RccError(f"{self.source}: node {node} lists child {child}, which is not after it")
                self._walk(child, path, depth + 1)
            return
        data_offset = self.data_offset + self._u32(at + 10)
        modified = self._unpack(">Q", at + 14) if self.version >= 2 else 0
        self._entries[path] = RccEntry(path, flags, data_offset, modified)

    # -- access ----------------------------------------------------------------------------------
    def paths(self) -> list[str]:
        """Every file's path, '/'-separated and starting with '/', in tree order."""
        return list(self._entries)

    def entry(self, path: str) -> RccEntry:
        try:
            return self._entries[path]
        except KeyError:
            raise KeyError(f"{path!r} is not in {self.source} ({len(self._entries)} files)") from None

    def read(self, path: str) -> bytes:
        """The file's bytes, decompressed."""
        entry = self.entry(path)
        size = self._u32(entry.data_offset)
        payload = self.blob[entry.data_offset + 4 : entry.data_offset + 4 + size]
        if len(payload) != size:
            raise RccError(f"{self.source}: payload of {path} runs past the end of the bundle")
        if entry.flags & COMPRESSED_ZSTD:
            return _zstd_decompress(payload, f"{self.source}:{path}")
        if entry.flags & COMPRESSED_ZLIB:
            if size < 4:
                raise RccError(f"{self.source}: zlib payload of {path} is shorter than its length field")
            expected = struct.unpack_from(">I", payload)[0]
            data = zlib.decompress(payload[4:])
            if len(data) != expected:
                raise RccError(f"{self.source}: {path} inflates to {len(data)} bytes, its header says {expected}")
            return data
        return payload

    def items(self) -> Iterator[tuple[str, bytes]]:
        for path in self._entries:
            yield path, self.read(path)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"RccFile({self.source!r}, version={self.version}, files={len(self)})"


def _zstd_decompress(payload: bytes, where: str) -> bytes:
    try:
        from compression import zstd  # Python 3.14+

        return zstd.decompress(payload)
    except ImportError:
        pass
    try:
        import zstandard
    except ImportError:
        raise RccError(f"{where} is zstd-compressed; install the 'zstandard' package to read it") from None
    return zstandard.ZstdDecompressor().decompress(payload, max_output_size=1 << 30)
