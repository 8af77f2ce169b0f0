"""Test images for the flash tests, made quickly: 256 MiB from a few distinct 1 MiB blocks.

Each block is random 64-byte words from a small vocabulary (compressible, not trivial);
the compressed images are the blocks compressed once each and concatenated in image
order (gzip members, xz/bz2 streams, zstd frames), which every decoder must follow.
Also bmap files in bmaptools' 2.0 format, with its BmapFileChecksum.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import lzma
import os
import random

import zstandard

MIB = 1024 * 1024
SUFFIX = {"raw": "", "gzip": ".gz", "xz": ".xz", "bz2": ".bz2", "zstd": ".zst"}
_COMPRESS = {
    "gzip": lambda data: gzip.compress(data, compresslevel=1),
    "xz": lambda data: lzma.compress(data, preset=0),
    "bz2": lambda data: bz2.compress(data, compresslevel=1),
    "zstd": lambda data: zstandard.ZstdCompressor(level=1).compress(data),
}


def make_block(rng: random.Random) -> bytes:
    words = [rng.randbytes(64) for _ in range(512)]
    return b"".join(rng.choice(words) for _ in range(MIB // 64))


def make_images(folder: str, mib: int = 256, distinct: int = 8, seed: int = 10) -> dict[str, str]:
    """`raw` and one file per compression of the same `mib`-MiB image; also "sha256" of the raw one."""
    rng = random.Random(seed)
    blocks = [make_block(rng) for _ in range(distinct)]
    order = [rng.randrange(distinct) for _ in range(mib)]
    packed = {name: [compress(block) for block in blocks] for name, compress in _COMPRESS.items()}
    paths = {name: os.path.join(folder, f"image.raw{suffix}") for name, suffix in SUFFIX.items()}
    digest = hashlib.sha256()
    with open(paths["raw"], "wb") as raw:
        for index in order:
            raw.write(blocks[index])
            digest.update(blocks[index])
    for name in _COMPRESS:
        with open(paths[name], "wb") as out:
            for index in order:
                out.write(packed[name][index])
    return {**paths, "sha256": digest.hexdigest()}


def bmap_text(image_size: int, block_size: int, ranges: list[tuple[int, int, bytes]]) -> str:
    """A bmaptools 2.0 .bmap for blocks [first, last] with the given bytes, checksum included."""
    body = "".join(
        f'        <Range chksum="{hashlib.sha256(data).hexdigest()}"> '
        f"{first if first == last else f'{first}-{last}'} </Range>\n"
        for first, last, data in ranges
    )
    mapped = sum(last - first + 1 for first, last, _ in ranges)
    text = (
        '<?xml version="1.0" ?>\n<bmap version="2.0">\n'
        f"    <ImageSize> {image_size} </ImageSize>\n    <BlockSize> {block_size} </BlockSize>\n"
        f"    <BlocksCount> {-(-image_size // block_size)} </BlocksCount>\n"
        f"    <MappedBlocksCount> {mapped} </MappedBlocksCount>\n"
        "    <ChecksumType> sha256 </ChecksumType>\n"
        f"    <BmapFileChecksum> {'0' * 64} </BmapFileChecksum>\n"
        f"    <BlockMap>\n{body}    </BlockMap>\n</bmap>\n"
    )
    return text.replace("0" * 64, hashlib.sha256(text.encode()).hexdigest(), 1)
