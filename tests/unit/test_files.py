"""Atomic file writes: the one helper behind keys, certificates, configs and lab records."""

from __future__ import annotations

import os

import pytest

from jumpstarter.files import write_atomic


def test_writes_with_the_mode_and_replaces_atomically(tmp_path):
    path = tmp_path / "sub" / "key"
    old = os.umask(0o077)
    try:
        write_atomic(str(path), b"one", 0o644)
    finally:
        os.umask(old)
    assert path.read_bytes() == b"one" and path.stat().st_mode & 0o777 == 0o644  # umask did not narrow it
    write_atomic(str(path), b"two", 0o600)
    assert path.read_bytes() == b"two" and path.stat().st_mode & 0o777 == 0o600
    assert os.listdir(path.parent) == ["key"]  # no temporary left behind


def test_exclusive_never_replaces_an_existing_file(tmp_path):
    path = tmp_path / "router.key"
    write_atomic(str(path), b"first", 0o600, exclusive=True)
    with pytest.raises(FileExistsError):
        write_atomic(str(path), b"second", 0o600, exclusive=True)
    assert path.read_bytes() == b"first"
    assert os.listdir(tmp_path) == ["router.key"]


def test_new_directories_get_exactly_their_mode_parents_included_whatever_the_umask(tmp_path):
    leaf = tmp_path / "a" / "b" / "c"
    old = os.umask(0)
    try:
        write_atomic(str(leaf / "key"), b"secret", 0o600, dir_mode=0o700)
    finally:
        os.umask(old)
    modes = {p.name: oct(p.stat().st_mode & 0o777) for p in (tmp_path / "a", tmp_path / "a" / "b", leaf)}
    assert modes == {"a": "0o700", "b": "0o700", "c": "0o700"}
    assert (leaf / "key").stat().st_mode & 0o777 == 0o600


def test_an_existing_directory_keeps_the_mode_its_owner_gave_it(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o750)
    write_atomic(str(shared / "key"), b"secret", 0o600, dir_mode=0o700)
    assert shared.stat().st_mode & 0o777 == 0o750
