"""Typed environment reading (shared/settings.py) and ``DEBUG`` namespaces (shared/logs.py)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from shared.cli import known_variables
from shared.logs import JsonFormatter, configure_logging, debug_loggers
from shared.settings import CommonSettings, ConfigError, Env, default_state_dir, unknown_variables
from tests.deploy.conftest import documented_variables
from tests.helpers import ROOT, free_port, port_open, wait_for

# ---------------------------------------------------------------------------
# Env
# ---------------------------------------------------------------------------


def test_unset_and_empty_values_give_the_default() -> None:
    env = Env({"EMPTY": ""})
    assert env.raw("EMPTY") is None and env.raw("MISSING") is None
    assert env.str("EMPTY", "d") == "d"
    assert env.int("EMPTY", 7) == 7
    assert env.float("MISSING", 1.5) == 1.5
    assert env.bool("MISSING", True) is True
    assert env.list("MISSING", ("a",)) == ("a",)
    assert env.opt_str("MISSING") is None


def test_int() -> None:
    env = Env({"N": "42", "NEG": "-3"})
    assert env.int("N", 0) == 42
    assert env.int("NEG", 0) == -3


@pytest.mark.parametrize("text", ["abc", "1.5", "10k", " "])
def test_bad_int_is_a_config_error(text: str) -> None:
    with pytest.raises(ConfigError) as info:
        Env({"TEAMDASH_X": text}).int("TEAMDASH_X", 1)
    assert "TEAMDASH_X" in str(info.value)
    assert isinstance(info.value, ValueError)


def test_int_below_min_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="at least 1"):
        Env({"N": "0"}).int("N", 5, min=1)
    assert Env({"N": "1"}).int("N", 5, min=1) == 1


def test_float() -> None:
    assert Env({"F": "0.25"}).float("F", 1.0) == 0.25
    with pytest.raises(ConfigError):
        Env({"F": "fast"}).float("F", 1.0)
    with pytest.raises(ConfigError):
        Env({"F": "0.01"}).float("F", 1.0, min=0.1)


@pytest.mark.parametrize(
    "text, value",
    [
        ("1", True),
        ("TRUE", True),
        ("yes", True),
        ("on", True),
        ("0", False),
        ("false", False),
        ("No", False),
        ("off", False),
    ],
)
def test_bool(text: str, value: bool) -> None:
    assert Env({"B": text}).bool("B", not value) is value


def test_bad_bool_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        Env({"B": "maybe"}).bool("B", False)


def test_list() -> None:
    assert Env({"L": " a, b ,,c "}).list("L") == ("a", "b", "c")


def test_common_settings_defaults(tmp_path: Path) -> None:
    settings = CommonSettings.from_env(Env({"TEAMDASH_STATE_DIR": str(tmp_path)}))
    assert settings.redis_url == "redis://127.0.0.1:6379/0"
    assert settings.redis_prefix == "td"
    assert settings.history_size == 1000
    assert settings.log_format == "text"
    assert settings.debug is None
    assert settings.state_dir == tmp_path


def test_common_settings_refuse_bad_values() -> None:
    with pytest.raises(ConfigError):
        CommonSettings.from_env(Env({"TEAMDASH_LOG_FORMAT": "xml"}))
    with pytest.raises(ConfigError):
        CommonSettings.from_env(Env({"TEAMDASH_HISTORY_SIZE": "lots"}))
    with pytest.raises(ConfigError):
        CommonSettings.from_env(Env({"TEAMDASH_HISTORY_TTL_S": "0"}))


def test_state_dir_follows_xdg() -> None:
    assert default_state_dir(Env({"XDG_STATE_HOME": "/x"})) == Path("/x/teamdash")


# ---------------------------------------------------------------------------
# DEBUG namespaces
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec, names",
    [
        ("ws:*", ["ws"]),
        ("ws:auth,runner:*", ["ws.auth", "runner"]),
        ("*", [""]),
        ("ws:auth", ["ws.auth"]),
        ("ws", ["ws"]),
        (" ws:conn , -ws:auth ", ["ws.conn"]),
        ("", []),
        (None, []),
    ],
)
def test_debug_loggers(spec: str | None, names: list[str]) -> None:
    assert debug_loggers(spec) == names


def test_configure_logging_turns_on_debug_namespaces() -> None:
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    names = ("ws", "ws.auth", "runner", "websockets")
    levels = {n: logging.getLogger(n).level for n in names}
    try:
        configure_logging("gateway", debug="ws:*")
        assert logging.getLogger("ws.auth").isEnabledFor(logging.DEBUG)
        assert not logging.getLogger("runner").isEnabledFor(logging.DEBUG)
        assert logging.getLogger("websockets").level == logging.WARNING
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
        for n, level in levels.items():
            logging.getLogger(n).setLevel(level)


def test_json_log_format() -> None:
    record = logging.LogRecord("ws.auth", logging.INFO, __file__, 1, "hello %s", ("x",), None)
    record.session_id = "s-1"
    doc = json.loads(JsonFormatter("gateway").format(record))
    assert doc["msg"] == "hello x"
    assert (doc["level"], doc["service"], doc["logger"]) == ("info", "gateway", "ws.auth")
    assert doc["session_id"] == "s-1"
    assert doc["ts"].endswith("Z")


# ---------------------------------------------------------------------------
# Unknown TEAMDASH_* variables (a typo must not silently keep the default)
# ---------------------------------------------------------------------------


def test_env_records_every_name_asked_for() -> None:
    env = Env({"A": "1"})
    env.int("A", 0)
    env.opt_str("B")
    assert env.asked == {"A", "B"}


def test_unknown_variables_name_the_closest_known_one() -> None:
    known = ["TEAMDASH_SEND_BUFFER_BYTES", "TEAMDASH_GATEWAY_PORT"]
    environ = {
        "TEAMDASH_SEND_BUFER_BYTES": "1",
        "TEAMDASH_GATEWAY_PORT": "3001",
        "TEAMDASH_COMPLETELY_ELSE": "x",
        "TEAMDASH_TEST_TIMEOUT_SCALE": "2",  # the test suite's
        "TEAMDASH_LB_BIND": ":3001",  # HAProxy's
        "PATH": "/usr/bin",
    }
    assert unknown_variables(environ, known) == [
        ("TEAMDASH_COMPLETELY_ELSE", None),
        ("TEAMDASH_SEND_BUFER_BYTES", "TEAMDASH_SEND_BUFFER_BYTES"),
    ]


def test_known_variables_come_from_the_settings_objects() -> None:
    known = known_variables()
    # One of each service's, and the client commands'.
    assert {
        "TEAMDASH_SEND_BUFFER_BYTES",
        "TEAMDASH_CURSOR_FLUSH_INTERVAL_S",
        "TEAMDASH_AGENT_OUTPUT_EVENTS_PER_SECOND",
        "TEAMDASH_ALERT_DISK_CRITICAL",
        "TEAMDASH_URL",
    } <= known
    assert all(name.startswith("TEAMDASH_") for name in known)


def test_every_variable_a_settings_object_reads_is_in_the_readme_table() -> None:
    documented = documented_variables([ROOT / "README.md"])
    missing = sorted(known_variables() - documented)
    assert not missing, f"not in the README's configuration table: {missing}"


@pytest.mark.parametrize("service", ["gateway", "runner", "collector"])
async def test_each_service_warns_once_about_a_misspelt_variable(
    service: str, service_env: dict[str, str], start_service: Any, tmp_path: Path
) -> None:
    env = {
        **service_env,
        "TEAMDASH_GATEWAY_PORT": str(free_port()),
        "TEAMDASH_WORKSPACE_ROOT": str(tmp_path / "workspaces"),
        "TEAMDASH_SEND_BUFER_BYTES": "65536",
        "TEAMDASH_RUNNER_HEARTBAET_S": "1",
    }
    proc = start_service(service, env)
    warning = "unknown variable TEAMDASH_SEND_BUFER_BYTES is ignored; did you mean TEAMDASH_SEND_BUFFER_BYTES?"
    await wait_for(lambda: warning in proc.log_text(), timeout=20, what="the warning")
    other = "unknown variable TEAMDASH_RUNNER_HEARTBAET_S is ignored; did you mean TEAMDASH_RUNNER_HEARTBEAT_S?"
    assert other in proc.log_text()
    # Once, at start-up, before the service is up; then the service runs normally.
    if service == "gateway":
        await wait_for(lambda: port_open(int(env["TEAMDASH_GATEWAY_PORT"])), what="the port")
    text = proc.log_text()
    assert text.count(warning) == 1 and text.count(other) == 1
    assert proc.alive()
