"""Shell driver config: env_from_client names, fixed env values and method forms are validated at load."""

from __future__ import annotations

import textwrap

import pytest

from jumpstarter.config.exporter import load_exporter_config
from jumpstarter.errors import ConfigError


def load(tmp_path, config: str):  # type: ignore[no-untyped-def]
    path = tmp_path / "exporter.yaml"
    body = textwrap.indent(textwrap.dedent(config).strip("\n"), "      ")
    path.write_text(f"export:\n  tools:\n    type: shell\n    config:\n{body}\n")
    return load_exporter_config(str(path)).build().children["tools"]


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ("methods: {d: {script: x, env_from_client: [9X]}}", "'9X' is not a valid environment variable name"),
        (
            "methods: {d: {script: x, env_from_client: [A-B]}}",
            "'A-B' is not a valid environment variable name",
        ),
        ("methods: {d: {script: x, env_from_client: BUILD_ID}}", "env_from_client: expected a list"),
        ("methods: {d: {script: x, env_from_client: [LD_PRELOAD]}}", "LD_PRELOAD changes how the shell"),
        ("methods: {d: {script: x, env_from_client: [BASH_ENV]}}", "BASH_ENV changes how the shell"),
        ("methods: {d: {script: x, env: [A]}}", "unknown keys env"),
        ("methods: {d: {script: x, command: y}}", "exactly one of `script`/`command`"),
        ("methods: {d: {env_from_client: [A]}}", "exactly one of `script`/`command`"),
        ("methods: {d: {script: x, timeout: -1}}", "timeout: must be positive"),
        ("methods: {d: x}\nenv: {'A B': x}", "'A B' is not a valid environment variable name"),
        ('methods: {d: x}\nenv: {A: "a\\0b"}', "env: A: contains a NUL character"),
        (f"methods: {{d: x}}\nenv: {{A: {'x' * 5000}}}", "env: A: longer than 4096 characters"),
    ],
)
def test_bad_shell_config_is_refused_at_load(tmp_path, config, message):
    with pytest.raises(ConfigError) as info:
        load(tmp_path, config)
    assert message in str(info.value), str(info.value)


def test_short_form_upstream_form_and_allowlist_form_load(tmp_path):
    tools = load(
        tmp_path,
        """
        methods:
          status: git status
          greet: {command: 'echo "hello $1"', description: Say hello, timeout: 5}
          deploy: {script: ./deploy.sh "$1", env_from_client: [BUILD_ID, BOARD_REV]}
        env: {LAB: bench-3}
        """,
    )
    assert list(tools.methods) == ["status", "greet", "deploy"]
    assert tools.methods["deploy"].env_from_client == {"BUILD_ID", "BOARD_REV"}
    assert tools.methods["greet"].timeout == 5 and tools.methods_description["greet"] == "Say hello"
    assert tools.env == {"LAB": "bench-3"}


def test_the_example_exporter_config_shows_a_method_with_env_from_client():
    from pathlib import Path

    example = Path(__file__).resolve().parents[2] / "etc/exporter-example.yaml"
    tools = load_exporter_config(str(example)).build().children["tools"]
    assert tools.methods["fetch-build"].env_from_client == {"BUILD_ID"}
    assert all(not m.env_from_client for name, m in tools.methods.items() if name != "fetch-build")
