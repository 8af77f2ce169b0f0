"""power.http against a local HTTP switch, driven through exporterd by the CLI."""

from __future__ import annotations

import base64

import pytest

from .conftest import exporter_config, unused_tcp_port


def http_power_board(base_url: str, *extra: str) -> str:
    """power.http switching `<base_url>/relay/0`; `extra` are more `key: value` config lines."""
    settings = [
        f"on: {base_url}/relay/0?turn=on",
        f'off: {{url: "{base_url}/relay/0?turn=off", method: PUT}}',
        "timeout: 5",
        *extra,
    ]
    return exporter_config(
        "power:\n  type: power.http\n  config:\n" + "".join(f"    {s}\n" for s in settings)
    )


def test_http_power_sends_the_configured_requests_with_basic_auth(cli, exporterd, http_switch):
    exporter = exporterd.start(http_power_board(http_switch.url, "username: admin", "password: s3cret"))

    on = cli("--host", exporter.socket, "power", "on")
    off = cli("--host", exporter.socket, "power", "off")

    assert on.returncode == 0, on.stderr
    assert off.returncode == 0, off.stderr
    auth = "Basic " + base64.b64encode(b"admin:s3cret").decode()
    assert http_switch.requests == [
        ("POST", "/relay/0?turn=on", auth),
        ("PUT", "/relay/0?turn=off", auth),
    ]
    assert "s3cret" not in exporter.log()


def test_http_power_without_credentials_sends_no_authorization_header(cli, exporterd, http_switch):
    exporter = exporterd.start(http_power_board(http_switch.url))

    result = cli("--host", exporter.socket, "power", "on")

    assert result.returncode == 0, result.stderr
    assert http_switch.requests == [("POST", "/relay/0?turn=on", None)]


def test_switch_answering_500_exits_1_with_the_http_status(cli, exporterd, http_switch):
    exporter = exporterd.start(http_power_board(http_switch.url))
    http_switch.status = 500

    result = cli("--host", exporter.socket, "power", "on")

    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "HTTP 500" in lines[0]
    assert "POST" in lines[0] and f"{http_switch.url}/relay/0" in lines[0]
    assert "turn=on" not in lines[0]  # query strings may carry tokens: not echoed
    assert http_switch.requests == [("POST", "/relay/0?turn=on", None)]


@pytest.mark.parametrize("command", ["on", "off"])
def test_unreachable_switch_exits_1_with_a_clear_error(cli, exporterd, command):
    url = f"http://127.0.0.1:{unused_tcp_port()}"
    exporter = exporterd.start(http_power_board(url))

    result = cli("--host", exporter.socket, "power", command)

    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "power switch unreachable" in lines[0]
    assert f"{url}/relay/0" in lines[0]
    assert "refused" in lines[0].lower()
    assert "Traceback" not in result.stderr


def test_http_power_config_with_a_non_http_url_is_rejected_at_load(cli, workdir):
    import os

    config = os.path.join(workdir, "ftp-switch.yaml")
    with open(config, "w") as handle:
        handle.write(http_power_board("ftp://127.0.0.1:1"))

    result = cli("--config", config, "power", "on")

    assert result.returncode == 2
    assert (
        f"{config}:7: export.power.config: power.http: on: url must start with http:// or https://"
        in result.stderr
    )
