"""Every example config under etc/ loads with the loader its daemon uses (so the docs stay true)."""

from __future__ import annotations

from pathlib import Path

ETC = Path(__file__).resolve().parents[2] / "etc"


def test_the_controller_example_loads_with_its_documented_keys():
    from controllerd.config import load

    config = load(str(ETC / "controllerd.yaml"))
    assert config.max_pending_leases == 20 and config.max_lease_duration == 604800
    assert config.offline_after == 30


def test_the_router_example_loads():
    from routerd.config import load_config

    config = load_config(str(ETC / "routerd.yaml"))
    assert config.max_streams_per_lease < config.max_streams


def test_the_inventory_example_loads_every_board():
    from jumpstarter.config.inventory import load_inventory

    inventory = load_inventory(str(ETC / "inventory.yaml"))
    assert [board.name for board in inventory.boards] == ["rpi4-01", "simulator"]
    assert inventory.user == "jumpstarter"


def test_the_exporter_examples_build_their_driver_trees():
    from jumpstarter.config.exporter import load_config

    for name, children in (
        ("exporter-example.yaml", {"power", "serial", "storage", "ssh", "tools"}),
        ("exporter-qemu.yaml", {"qemu", "power", "serial", "storage", "network"}),
    ):
        root = load_config(str(ETC / name)).build()
        assert set(root.children) == children, name
