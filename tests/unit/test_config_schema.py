"""jumpstarter/config/schema.py: each kind of check, the allowlist, and `file:line: key: problem` errors."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from jumpstarter.config.client import load_client_config
from jumpstarter.config.schema import (
    EMPTY,
    OMIT,
    Field,
    Section,
    boolean,
    choice,
    list_of,
    load_document,
    named,
    number,
    path,
    pattern,
    text,
    text_mapping,
)
from jumpstarter.errors import ConfigError
from jumpstarter.names import check_name

TLS = Section(
    Field("cert", path(), default=None),
    Field("insecure", boolean, default=False),
    what="a mapping with cert and insecure",
)
SETTINGS = Section(
    Field("name", named(lambda value: check_name(value, "board name"))),
    Field("mode", choice("fast", "safe"), default="safe"),
    Field("retries", number(whole=True), default=3),
    Field("timeout", number(unit="seconds", at_most=60, too_big="at most a minute"), default=OMIT),
    Field("tag", pattern(re.compile(r"^v[0-9]+$"), "expected vN"), default=None, unset="null"),
    Field("motd", text(), attr="banner", default="", unset="falsy"),
    Field("peers", list_of(text("HOST:PORT"), "a list of peers"), default=[]),
    Field("labels", text_mapping(), default={}),
    Field("tls", TLS, default=EMPTY),
    what="a mapping of settings",
)


def load(tmp_path: Path, yaml_text: str) -> dict:  # type: ignore[type-arg]
    file = tmp_path / "settings.yaml"
    file.write_text(textwrap.dedent(yaml_text))
    return load_document(str(file), SETTINGS)


def refused(tmp_path: Path, yaml_text: str) -> str:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, yaml_text)
    return str(info.value).replace(str(tmp_path / "settings.yaml"), "FILE")


def test_defaults_fill_absent_keys_and_a_nested_section_reads_its_own(tmp_path: Path) -> None:
    values = load(tmp_path, "name: rpi4\n")
    assert values == {
        "name": "rpi4",
        "mode": "safe",
        "retries": 3,
        "tag": None,
        "banner": "",
        "peers": [],
        "labels": {},
        "tls": {"cert": None, "insecure": False},
    }
    assert "timeout" not in values  # OMIT leaves an absent key out


def test_declared_values_are_checked_converted_and_renamed(tmp_path: Path) -> None:
    values = load(
        tmp_path,
        """\
        name: rpi4
        mode: fast
        retries: 5
        timeout: 30
        tag: v2
        motd: hello
        peers: [a:1, b:2]
        labels: {board: 4, rev: b}
        tls: {cert: certs/x.crt, insecure: true}
        """,
    )
    assert (values["mode"], values["retries"], values["timeout"], values["tag"]) == ("fast", 5, 30.0, "v2")
    assert isinstance(values["timeout"], float) and values["banner"] == "hello"
    assert values["peers"] == ["a:1", "b:2"] and values["labels"] == {"board": "4", "rev": "b"}
    assert values["tls"] == {"cert": str(tmp_path / "certs" / "x.crt"), "insecure": True}


def test_unset_null_and_falsy_count_as_absent_only_where_declared(tmp_path: Path) -> None:
    values = load(tmp_path, "name: rpi4\ntag: null\nmotd: ''\n")
    assert (values["tag"], values["banner"]) == (None, "")
    assert (
        refused(tmp_path, "name: rpi4\nmode: null\n") == "FILE:2: mode: expected one of fast, safe, got null"
    )


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("name: rpi4\ncolour: red\n", "FILE:2: colour: unknown key (accepted: labels, mode, motd, name, "),
        ("mode: fast\n", "FILE:1: missing 'name'"),
        ("name: Bad_Name\n", "FILE:1: name: invalid board name 'Bad_Name': use 1-63 lowercase letters"),
        ("name: a\nmode: turbo\n", "FILE:2: mode: expected one of fast, safe, got 'turbo'"),
        ("name: a\nretries: 2.5\n", "FILE:2: retries: expected a positive whole number, got 2.5"),
        ("name: a\nretries: true\n", "FILE:2: retries: expected a positive whole number, got True"),
        ("name: a\nretries: 0\n", "FILE:2: retries: expected a positive whole number, got 0"),
        ("name: a\ntimeout: soon\n", "FILE:2: timeout: expected a positive number of seconds, got 'soon'"),
        ("name: a\ntimeout: 61\n", "FILE:2: timeout: at most a minute"),
        ("name: a\ntag: release\n", "FILE:2: tag: expected vN"),
        ("name: a\nmotd: [x]\n", "FILE:2: motd: expected text, got list"),
        ("name: a\npeers: a:1\n", "FILE:2: peers: expected a list of peers, got 'a:1'"),
        ("name: a\npeers:\n  - a:1\n  - 7\n", "FILE:2: peers.1: expected HOST:PORT, got 7"),
        ("name: a\nlabels: [x]\n", "FILE:2: labels: expected a mapping, got list"),
        ("- name\n", "FILE:1: expected a mapping of settings, got list"),
        (
            "name: a\n\ntls:\n  cert: x\n  insecure: maybe\n",
            "FILE:5: tls.insecure: expected true or false, got 'maybe'",
        ),
        (
            "name: a\ntls:\n  cert: x\n\n  chain: y\n",
            "FILE:5: tls.chain: unknown key (accepted: cert, insecure)",
        ),
        ("name: a\ntls: yes\n", "FILE:2: tls: expected a mapping with cert and insecure, got True"),
        ("name: a\ntls:\n  cert: ''\n", "FILE:3: tls.cert: expected a file path, got ''"),
    ],
)
def test_every_mistake_reads_file_line_key_problem(tmp_path: Path, yaml_text: str, message: str) -> None:
    assert refused(tmp_path, yaml_text).startswith(message)


def test_the_first_unknown_key_in_the_file_is_named(tmp_path: Path) -> None:
    assert refused(tmp_path, "name: a\nzz: 1\naa: 2\n").startswith("FILE:2: zz: unknown key")


def test_yaml_syntax_errors_and_duplicate_keys_are_config_errors_with_a_line(tmp_path: Path) -> None:
    assert refused(tmp_path, "name: a\nname: b\n") == "FILE:2: duplicate key 'name'"
    assert refused(tmp_path, "name: a\npeers: [x\n").startswith("FILE:3: ")


def test_an_empty_file_is_an_empty_mapping_only_when_allowed(tmp_path: Path) -> None:
    file = tmp_path / "empty.yaml"
    file.write_text("")
    with pytest.raises(
        ConfigError,
        match=r"empty.yaml: the file is empty \(no YAML document in it\); expected a mapping of settings",
    ):
        load_document(str(file), SETTINGS)
    with pytest.raises(ConfigError, match=r"empty.yaml:1: missing 'name'"):
        load_document(str(file), SETTINGS, empty_ok=True)


def test_values_point_at_a_key_for_rules_across_keys(tmp_path: Path) -> None:
    values = load_document(str(_write(tmp_path, "name: a\n\nretries: 9\n")), SETTINGS)
    assert str(values.at("retries").error("too many")).endswith("settings.yaml:3: retries: too many")
    assert str(values.at("mode").error("x")).endswith(
        "settings.yaml:1: mode: x"
    )  # absent: the section's line


def _write(tmp_path: Path, text_: str) -> Path:
    file = tmp_path / "settings.yaml"
    file.write_text(text_)
    return file


# The five loaders read through the schema: the allowlist now covers sections that were not checked before.


def _refused_by(loader, tmp_path: Path, name: str, yaml_text: str) -> str:  # type: ignore[no-untyped-def]
    file = tmp_path / name
    file.write_text(textwrap.dedent(yaml_text))
    with pytest.raises(ConfigError) as info:
        loader(str(file))
    return str(info.value).replace(str(file), "FILE")


def test_a_client_config_with_a_misspelt_key_is_refused_at_its_line(tmp_path: Path) -> None:
    from jumpstarter.config.client import load_client_config

    text_ = "kind: ClientConfig\nendpoint: ctl:443\ntoken: t\ntls: {ca: '', insecure: false}\ntokne: x\n"
    assert _refused_by(load_client_config, tmp_path, "c.yaml", text_).startswith("FILE:5: tokne: unknown key")
    nested = "kind: ClientConfig\nendpoint: ctl:443\ntoken: t\ndrivers:\n  alow: [x]\n"
    assert _refused_by(load_client_config, tmp_path, "c.yaml", nested).startswith(
        "FILE:5: drivers.alow: unknown key (accepted: allow, unsafe)"
    )


def test_a_client_config_written_by_upstream_still_loads(tmp_path: Path) -> None:
    from jumpstarter.config.client import load_client_config

    file = tmp_path / "alice.yaml"
    file.write_text(
        "apiVersion: jumpstarter.dev/v1alpha1\nkind: ClientConfig\nmetadata: {namespace: lab, name: alice}\n"
        "endpoint: ctl:443\ntoken: t\nrefresh_token: null\ngrpcOptions: {}\ntls: {ca: '', insecure: false}\n"
        "drivers: {allow: [a.*], unsafe: false}\nshell: {use_profiles: false}\nleases: {dial_timeout: 5}\n"
    )
    config = load_client_config(str(file))
    assert (config.namespace, config.name, config.alias, config.allow) == ("lab", "alice", "alice", ["a.*"])


def test_an_exporter_tls_that_is_not_a_mapping_is_a_config_error(tmp_path: Path) -> None:
    from jumpstarter.config.exporter import load_exporter_config

    message = _refused_by(load_exporter_config, tmp_path, "e.yaml", "export: {}\ntls: yes\n")
    assert message.startswith("FILE:2: tls: expected a mapping with ca (base64 PEM) and insecure")
    message = _refused_by(load_exporter_config, tmp_path, "e.yaml", "export: {}\nmetadata:\n  nmae: x\n")
    assert message.startswith("FILE:3: metadata.nmae: unknown key")


def test_controllerd_names_the_unknown_tls_key_at_its_own_line(tmp_path: Path) -> None:
    from controllerd.config import load_controller_config

    text_ = "listen: 127.0.0.1:1\ntls:\n  cert: a.crt\n  chian: b\n"
    message = _refused_by(load_controller_config, tmp_path, "controllerd.yaml", text_)
    assert message.startswith("FILE:4: tls.chian: unknown key (accepted: ca, ca_key, cert, key)")


def test_inventory_board_hooks_report_the_board_and_line(tmp_path: Path) -> None:
    from jumpstarter.config.inventory import load_inventory

    text_ = "boards:\n  - name: a\n    export: {}\n    hooks:\n      beforeLease: {script: x, timeout: 0}\n"
    message = _refused_by(load_inventory, tmp_path, "inventory.yaml", text_)
    assert message.startswith(
        "FILE:5: board a: hooks.beforeLease.timeout: expected a positive number of seconds, got 0"
    )


@pytest.mark.parametrize("section, key", [("tls", "insecure"), ("drivers", "unsafe")])
def test_a_quoted_false_is_refused_not_read_as_true(tmp_path: Path, section: str, key: str) -> None:
    """`insecure: "false"` once meant insecure (any non-empty value was true): security flags are strict."""
    path = tmp_path / "client.yaml"
    path.write_text(
        "apiVersion: jumpstarter.dev/v1alpha1\nkind: ClientConfig\n"
        "metadata: {name: alice, namespace: lab}\nendpoint: ctl.lab:443\ntoken: t\n"
        f'{section}:\n  {key}: "false"\n'
    )
    with pytest.raises(ConfigError, match=rf":7: {section}.{key}: expected true or false, got 'false'"):
        load_client_config(str(path))
    path.write_text(path.read_text().replace('"false"', "null"))
    config = load_client_config(str(path))
    assert (config.insecure if section == "tls" else config.unsafe) is False
