"""Block maps (bmaptools' `.bmap` XML, version 2.x): which ranges of a sparse image hold data.

Only the mapped ranges are written and verified, each against its sha256. Parsed with
the stdlib `xml.etree` after bounding the input and refusing DTDs (no entity expansion).

>>> text = '''<?xml version="1.0" ?>
... <bmap version="2.0">
...   <ImageSize> 16384 </ImageSize> <BlockSize> 4096 </BlockSize> <BlocksCount> 4 </BlocksCount>
...   <MappedBlocksCount> 2 </MappedBlocksCount> <ChecksumType> sha256 </ChecksumType>
...   <BlockMap> <Range chksum="%s"> 0 </Range> <Range chksum="%s"> 2 </Range> </BlockMap>
... </bmap>''' % ("a" * 64, "b" * 64)
>>> bmap = parse(text)
>>> [(r.start, r.end) for r in bmap.ranges], bmap.mapped_bytes
([(0, 4096), (8192, 12288)], 8192)
"""

from __future__ import annotations

import hashlib
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass

MAX_TEXT = 16 * 1024 * 1024  # a bmap lists ranges, not data: megabytes at most
MAX_RANGES = 1_000_000
_HEX64 = re.compile(r"[0-9a-f]{64}")
_RANGE = re.compile(r"\s*(\d{1,19})\s*(?:-\s*(\d{1,19})\s*)?")


@dataclass(frozen=True)
class Range:
    """Bytes [start, end) of the image, and the sha256 they must have."""

    start: int
    end: int
    sha256: str


@dataclass(frozen=True)
class Bmap:
    image_size: int
    block_size: int
    ranges: tuple[Range, ...]

    @property
    def mapped_bytes(self) -> int:
        return sum(r.end - r.start for r in self.ranges)


def _number(root: ET.Element, tag: str) -> int:
    text = (root.findtext(tag) or "").strip()
    if not text.isdigit() or len(text) > 19:
        raise ValueError(f"bmap: <{tag}> must be a number, got {text[:40]!r}")
    return int(text)


def parse(text: str) -> Bmap:
    """A validated `Bmap` from the XML text (ValueError naming what is wrong)."""
    if len(text) > MAX_TEXT:
        raise ValueError(f"bmap: larger than {MAX_TEXT} bytes")
    if "<!" in text:  # DOCTYPE/ENTITY: a bmap has none, and refusing them rules out entity bombs
        raise ValueError("bmap: DTDs and entities are not allowed")
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise ValueError(f"bmap: not XML: {exc}") from None
    version = root.get("version", "")
    if root.tag != "bmap" or not version.startswith("2."):
        raise ValueError(f'bmap: expected <bmap version="2.x">, got <{root.tag} version={version!r}>')
    if (root.findtext("ChecksumType") or "").strip() != "sha256":
        raise ValueError("bmap: only ChecksumType sha256 is supported")
    _check_own_checksum(root, text)
    image_size, block_size = _number(root, "ImageSize"), _number(root, "BlockSize")
    blocks = _number(root, "BlocksCount")
    if block_size <= 0 or block_size % 512 or blocks != -(-image_size // block_size):
        raise ValueError("bmap: BlockSize/BlocksCount do not match ImageSize")
    ranges: list[Range] = []
    for element in root.iterfind("BlockMap/Range"):
        if len(ranges) >= MAX_RANGES:
            raise ValueError(f"bmap: more than {MAX_RANGES} ranges")
        match = _RANGE.fullmatch(element.text or "")
        digest = (element.get("chksum") or "").strip().lower()
        if match is None or not _HEX64.fullmatch(digest):
            raise ValueError(f"bmap: bad <Range> {element.text!r} (want 'first-last' and a sha256 chksum)")
        first = int(match.group(1))
        last = int(match.group(2) or first)
        previous_end = ranges[-1].end if ranges else 0
        if last < first or last >= blocks or first * block_size < previous_end:
            raise ValueError(f"bmap: range {first}-{last} is out of order or outside the image")
        ranges.append(Range(first * block_size, min((last + 1) * block_size, image_size), digest))
    if len(ranges) == 0:
        raise ValueError("bmap: no mapped ranges")
    return Bmap(image_size, block_size, tuple(ranges))


def _check_own_checksum(root: ET.Element, text: str) -> None:
    """bmaptools' BmapFileChecksum: the sha256 of the file with that field's value zeroed."""
    own = (root.findtext("BmapFileChecksum") or "").strip().lower()
    if not own:
        return
    if not _HEX64.fullmatch(own):
        raise ValueError("bmap: BmapFileChecksum is not a sha256")
    zeroed = text.replace(own, "0" * 64, 1).encode()
    if hashlib.sha256(zeroed).hexdigest() != own:
        raise ValueError("bmap: BmapFileChecksum does not match: the .bmap file is damaged")
