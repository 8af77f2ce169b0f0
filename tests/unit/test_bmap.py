"""bmap parsing and flash options: bad input gets a clear error before anything is written."""

from __future__ import annotations

import hashlib
import os
import re
import sys

import pytest

from jumpstarter import bmap
from jumpstarter.drivers.flashing import FlashOptions

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "integration"))
from storage_images import bmap_text  # noqa: E402

GOOD = bmap_text(3 * 4096, 4096, [(0, 0, b"a" * 4096), (2, 2, b"c" * 4096)])
# without its own (optional) checksum, so that each edit below reaches the check it is about
UNSIGNED = re.sub(r"\s*<BmapFileChecksum>[^<]*</BmapFileChecksum>", "", GOOD)


def test_a_bmaptools_file_parses_into_byte_ranges_with_their_sha256():
    parsed = bmap.parse(GOOD)
    assert [(r.start, r.end) for r in parsed.ranges] == [(0, 4096), (8192, 12288)]
    assert parsed.ranges[1].sha256 == hashlib.sha256(b"c" * 4096).hexdigest()


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        (UNSIGNED.replace("> 2 </Range>", "> 7 </Range>"), "outside the image"),
        (UNSIGNED.replace('version="2.0"', 'version="1.4"'), "version"),
        (UNSIGNED.replace("sha256 </ChecksumType>", "sha1 </ChecksumType>"), "sha256"),
        ('<!DOCTYPE bmap [<!ENTITY a "aaaa">]>' + UNSIGNED.split("?>", 1)[1], "DTDs"),
        (UNSIGNED.replace("<BlockSize> 4096", "<BlockSize> 4095"), "BlockSize"),
        (UNSIGNED[:-20], "not XML"),
        (UNSIGNED.replace('Range chksum="', 'Range chksum="zz', 1), "bad <Range>"),
    ],
)
def test_a_bad_bmap_is_refused_naming_the_problem(text, complaint):
    with pytest.raises(ValueError, match=complaint):
        bmap.parse(text)


def test_a_damaged_bmap_fails_its_own_checksum():
    damaged = GOOD.replace("<MappedBlocksCount> 2", "<MappedBlocksCount> 3")
    with pytest.raises(ValueError, match="BmapFileChecksum"):
        bmap.parse(damaged)


@pytest.mark.parametrize(
    "options",
    [{"size": -1}, {"size": True}, {"verify": "no"}, {"bmap": 5}, {"encoding": "lz4"}, {"path": "/etc"}, [1]],
)
def test_flash_options_are_validated(options):
    with pytest.raises(ValueError):
        FlashOptions.from_value(options)
