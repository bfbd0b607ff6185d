"""Unit tests of the runner's cores: no Redis, no agent processes."""

from __future__ import annotations

import math
import os
import sys
from collections import Counter
from pathlib import Path
from typing import get_args

import orjson
import pytest

from agent_runner.errors import InvalidRequest, SpawnFailed
from agent_runner.health import RedisHealth
from agent_runner.models import ModelConfigError, load_models, parse_models
from agent_runner.output import LineJoiner, OutputPacer, OutputSplitter, Piece
from agent_runner.policy import (
    agent_environment,
    memory_limit_mb,
    pick_cpus,
    resolve_workspace,
    sanitize_command,
    validate_environment,
)
from agent_runner.registry import protocol_status
from agent_runner.settings import RunnerSettings
from agent_runner.state import (
    FINAL,
    LIVE,
    TRANSITIONS,
    AgentState,
    Event,
    IllegalTransition,
    Status,
    next_status,
)
from shared.errors import ErrorCode
from shared.protocol import AgentState as ProtocolState
from shared.settings import ConfigError, Env
from tests.agent_runner.conftest import MODELS_FILE

# ---------------------------------------------------------------------------
# State machine
# ---------------------------------------------------------------------------

LEGAL = [
    (Status.STARTING, Event.STARTED, Status.RUNNING),
    (Status.STARTING, Event.FAILED, Status.CRASHED),
    (Status.STARTING, Event.TERMINATE, Status.STOPPING),
    (Status.RUNNING, Event.PAUSE, Status.PAUSED),
    (Status.PAUSED, Event.RESUME, Status.RUNNING),
    (Status.RUNNING, Event.TERMINATE, Status.STOPPING),
    (Status.PAUSED, Event.TERMINATE, Status.STOPPING),
    (Status.STOPPING, Event.TERMINATE, Status.STOPPING),
    (Status.STOPPING, Event.REAPED, Status.STOPPED),
    (Status.RUNNING, Event.EXITED, Status.STOPPED),
    (Status.RUNNING, Event.FAILED, Status.CRASHED),
    (Status.PAUSED, Event.FAILED, Status.CRASHED),
    (Status.STOPPING, Event.LOST, Status.CRASHED),
    (Status.RUNNING, Event.LOST, Status.CRASHED),
]


@pytest.mark.parametrize(("status", "event", "expected"), LEGAL)
def test_legal_transitions(status: Status, event: Event, expected: Status) -> None:
    assert next_status(status, event) == expected
    state = AgentState(status)
    assert state.can(event)
    assert state.handle(event) == expected
    assert state.status == expected


ILLEGAL = [
    (Status.STARTING, Event.PAUSE),
    (Status.RUNNING, Event.RESUME),
    (Status.RUNNING, Event.STARTED),
    (Status.PAUSED, Event.PAUSE),
    (Status.STOPPING, Event.PAUSE),
    (Status.STOPPING, Event.RESUME),
    (Status.STOPPING, Event.EXITED),
    (Status.RUNNING, Event.REAPED),
    *[(final, event) for final in FINAL for event in Event],
]


@pytest.mark.parametrize(("status", "event"), ILLEGAL)
def test_illegal_transitions_raise(status: Status, event: Event) -> None:
    state = AgentState(status)
    assert not state.can(event)
    with pytest.raises(IllegalTransition) as info:
        state.handle(event)
    assert state.status == status  # unchanged
    assert info.value.code == ErrorCode.INVALID_MESSAGE
    assert status.value in info.value.message


def test_table_shape() -> None:
    # Final statuses have no way out; every live status can be lost and terminated.
    assert not any(src in FINAL for src, _ in TRANSITIONS)
    for status in LIVE:
        assert TRANSITIONS[(status, Event.LOST)] == Status.CRASHED
        assert TRANSITIONS[(status, Event.TERMINATE)] == Status.STOPPING
    reachable = {Status.STARTING} | set(TRANSITIONS.values())
    assert reachable == set(Status)


def test_every_status_is_a_protocol_state() -> None:
    assert {protocol_status(s) for s in Status} == set(get_args(ProtocolState))


# ---------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------


def test_sanitize_strips_controls_keeps_tab_newline() -> None:
    raw = "a\x00b\x07c\td\r\ne\x1b[31mf\x7fg\x85h"
    assert sanitize_command(raw, max_chars=100, multiline=True) == "abc\td\ne[31mfgh"


def test_sanitize_single_line_models() -> None:
    assert sanitize_command("one\ntwo\rthree", max_chars=100, multiline=False) == "one two three"


def test_sanitize_keeps_unicode_and_replaces_lone_surrogates() -> None:
    assert sanitize_command("héllo ☃ 😀", max_chars=100, multiline=True) == "héllo ☃ 😀"
    assert sanitize_command("x\ud800y", max_chars=100, multiline=True) == "x?y"


def test_sanitize_length_cap() -> None:
    assert sanitize_command("a" * 10, max_chars=10, multiline=True) == "a" * 10
    with pytest.raises(InvalidRequest, match="too long"):
        sanitize_command("a" * 11, max_chars=10, multiline=True)
    # Removed control bytes do not count.
    assert sanitize_command("a" * 10 + "\x00" * 5, max_chars=10, multiline=True) == "a" * 10


# ---------------------------------------------------------------------------
# Workspaces
# ---------------------------------------------------------------------------


def test_workspace_inside_root_is_created(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    ws = resolve_workspace(root, "team/project-1")
    assert ws == (root / "team" / "project-1").resolve()
    assert ws.is_dir()
    assert resolve_workspace(root, "./team/project-1") == ws
    assert resolve_workspace(root, str(root / "abs")) == (root / "abs").resolve()


@pytest.mark.parametrize("bad", ["../x", "a/../../x", "a/..", ".."])
def test_workspace_dotdot_refused(tmp_path: Path, bad: str) -> None:
    with pytest.raises(SpawnFailed, match="escapes the workspace root") as info:
        resolve_workspace(tmp_path, bad)
    assert info.value.code == ErrorCode.AGENT_SPAWN_FAILED


def test_workspace_absolute_outside_refused(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    with pytest.raises(SpawnFailed, match="escapes the workspace root"):
        resolve_workspace(root, "/etc")
    with pytest.raises(SpawnFailed, match="escapes"):
        resolve_workspace(root, str(tmp_path / "rootx"))


def test_workspace_symlink_escape_refused(tmp_path: Path) -> None:
    root = tmp_path / "root"
    outside = tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "link").symlink_to(outside)
    with pytest.raises(SpawnFailed, match="symlink"):
        resolve_workspace(root, "link")
    with pytest.raises(SpawnFailed, match="symlink"):
        resolve_workspace(root, "link/deeper")
    assert not (outside / "deeper").exists()
    # A symlink that stays inside the root is fine.
    (root / "real").mkdir()
    (root / "inner").symlink_to(root / "real")
    assert resolve_workspace(root, "inner") == (root / "real").resolve()


def test_workspace_file_and_empty_refused(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(SpawnFailed, match="not a directory"):
        resolve_workspace(tmp_path, "file")
    with pytest.raises(SpawnFailed):
        resolve_workspace(tmp_path, " ")
    with pytest.raises(SpawnFailed):
        resolve_workspace(tmp_path, "a\x00b")


# ---------------------------------------------------------------------------
# Environment
# ---------------------------------------------------------------------------


def test_environment_valid() -> None:
    assert validate_environment(None) == {}
    env = {"FOO": "1", "_bar9": "x y", "PYTHONUNBUFFERED": "1"}
    assert validate_environment(env) == env


@pytest.mark.parametrize(
    "key",
    ["1ABC", "A-B", "A B", "", "A=B", "É"],
)
def test_environment_bad_names(key: str) -> None:
    with pytest.raises(SpawnFailed, match="not valid"):
        validate_environment({key: "x"})


@pytest.mark.parametrize(
    "key",
    [
        "LD_PRELOAD",
        "ld_library_path",
        "DYLD_INSERT_LIBRARIES",
        "PYTHONPATH",
        "TEAMDASH_RUNNER_ID",
        "PATH",
        "HOME",
        "NODE_OPTIONS",
        "BASH_ENV",
        "GLIBC_TUNABLES",
        "REDIS_URL",
    ],
)
def test_environment_forbidden(key: str) -> None:
    with pytest.raises(SpawnFailed, match="may not be set"):
        validate_environment({key: "x"})


def test_environment_reserved_and_nul() -> None:
    with pytest.raises(SpawnFailed, match="model configuration"):
        validate_environment({"ANTHROPIC_API_KEY": "k"}, reserved={"ANTHROPIC_API_KEY"})
    with pytest.raises(SpawnFailed, match="NUL"):
        validate_environment({"A": "x\x00y"})


def test_agent_environment_is_explicit(tmp_path: Path) -> None:
    env = agent_environment(
        workspace=tmp_path,
        home=tmp_path / "home",
        path="/usr/bin:/bin",
        lang="C.UTF-8",
        model_env={"M": "1"},
        passthrough={"KEY": "secret"},
        user_env={"U": "2"},
    )
    assert env == {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path / "home"),
        "PWD": str(tmp_path),
        "LANG": "C.UTF-8",
        "TERM": "dumb",
        "NO_COLOR": "1",
        "M": "1",
        "KEY": "secret",
        "U": "2",
    }
    assert "REDIS_URL" not in env


# ---------------------------------------------------------------------------
# CPU / memory
# ---------------------------------------------------------------------------


def test_pick_cpus() -> None:
    assert pick_cpus([0, 1], 2, Counter()) is None
    assert pick_cpus([0, 1, 2, 3], 0.5, Counter()) == [0]
    assert pick_cpus([0, 1, 2, 3], 1.5, Counter({0: 2, 1: 1})) == [2, 3]
    assert pick_cpus([0, 1, 2, 3], 1, Counter({0: 1, 2: 1})) == [1]
    assert memory_limit_mb(63.2, None) == 64
    assert memory_limit_mb(None, 512) == 512
    assert memory_limit_mb(None, None) is None


# ---------------------------------------------------------------------------
# Output splitting
# ---------------------------------------------------------------------------


def _texts(pieces: list[Piece]) -> list[str]:
    return [p.text for p in pieces]


def test_splitter_lines_and_partial_flush() -> None:
    s = OutputSplitter(max_chars=100, flush_delay_s=0.05)
    assert _texts(s.feed(b"one\ntwo\nthr", now=1.0)) == ["one\n", "two\n"]
    assert s.pending and s.deadline == pytest.approx(1.05)
    # More text without a newline does not push the deadline back.
    assert s.feed(b"ee", now=1.04) == []
    assert s.deadline == pytest.approx(1.05)
    assert s.flush() == [Piece("three", False)]
    assert not s.pending and s.deadline is None
    # The rest of the line arrives later: it ends the line.
    assert s.feed(b" more\nnext", now=2.0) == [Piece(" more\n", True)]
    assert s.deadline == pytest.approx(2.05)
    assert s.finish() == [Piece("next", False)]


def test_splitter_size_cap() -> None:
    s = OutputSplitter(max_chars=4, flush_delay_s=1)
    pieces = s.feed(b"abcdefghij\nxyzuvw", now=0)
    assert pieces == [
        Piece("abcd", False),
        Piece("efgh", False),
        Piece("ij\n", True),
        Piece("xyzu", False),
    ]
    assert s.flush() == [Piece("vw", False)]


def test_splitter_utf8_never_split() -> None:
    data = "é☃😀 ok\n".encode()
    for cut in range(1, len(data)):
        s = OutputSplitter()
        out = s.feed(data[:cut], now=0) + s.flush() + s.feed(data[cut:], now=1) + s.finish()
        text = "".join(_texts(out))
        assert text == "é☃😀 ok\n"
        assert "\ufffd" not in text


def test_splitter_invalid_utf8_replaced() -> None:
    s = OutputSplitter()
    out = s.feed(b"bad \xff\xfe ok\n", now=0)
    assert _texts(out) == ["bad \ufffd\ufffd ok\n"]
    assert s.feed(b"cut \xe2\x98", now=0) == []
    # An unfinished character at the end of the stream becomes U+FFFD.
    assert _texts(s.finish()) == ["cut \ufffd"]


def test_splitter_every_byte_alone() -> None:
    data = ("line ✓\n" * 3).encode()
    s = OutputSplitter()
    out: list[Piece] = []
    for i in range(len(data)):
        out += s.feed(data[i : i + 1], now=i)
    assert _texts(out) == ["line ✓\n"] * 3


# ---------------------------------------------------------------------------
# Whole lines for drivers
# ---------------------------------------------------------------------------


def test_line_joiner() -> None:
    j = LineJoiner()
    assert j.add(Piece('{"type":"res', False)) is None
    assert j.pending == '{"type":"res'
    assert j.add(Piece('ult"}\n', True)) == '{"type":"result"}\n'
    assert j.pending == ""


# ---------------------------------------------------------------------------
# Model configuration and settings
# ---------------------------------------------------------------------------


def test_default_models_file() -> None:
    registry = load_models()
    assert {"claude-3-opus", "claude-3-sonnet", "demo"} <= set(registry.models)
    opus = registry.get("claude-3-opus")
    assert opus.argv[:2] == ("claude", "-p")
    assert "--input-format" in opus.argv and "stream-json" in opus.argv
    assert opus.driver == "claude-code" and opus.make_driver().multiline
    assert opus.permission_mode == "acceptEdits" and "Edit" in opus.allowed_tools
    assert opus.launch_argv(None)[-6:] == (
        "--permission-mode",
        "acceptEdits",
        "--allowedTools",
        ",".join(opus.allowed_tools),
        "--permission-prompt-tool",
        "stdio",
    )
    assert "CLAUDE_CODE_OAUTH_TOKEN" in opus.pass_env
    demo = registry.get("demo")
    assert demo.argv[0] == sys.executable
    assert Path(demo.argv[-1]).is_file()
    with pytest.raises(SpawnFailed, match="unknown model 'gpt'.*claude-3-opus"):
        registry.get("gpt")


def test_framing() -> None:
    registry = load_models(MODELS_FILE)
    turn = orjson.loads(registry.get("echo-json").make_driver().frame("hi\nthere"))
    assert turn == {
        "type": "user",
        "message": {"role": "user", "content": [{"type": "text", "text": "hi\nthere"}]},
    }
    assert registry.get("echo").make_driver().frame("hi") == b"hi\n"
    echo = registry.get("echo")
    assert echo.argv[-1] == str(MODELS_FILE.parent / "echo.py")
    assert echo.env == {"FIXTURE": "echo"}
    assert echo.completion_regex is not None and echo.completion_regex.pattern == "^__DONE__$"


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("[models.x]\nargv = []\n", "argv must not be empty"),
        ("[models.x]\nargv = 'sh'\n", "list of strings"),
        ("[models.x]\nargv = ['sh']\ndriver = 'xml'\n", "driver must be"),
        ("[models.x]\nargv = ['sh']\ncompletion_regex = '('\n", "bad completion_regex"),
        (
            "[models.x]\nargv = ['sh']\ndriver = 'codex'\ncompletion_regex = 'x'\n",
            "only apply to driver 'line'",
        ),
        ("[models.x]\nargv = ['sh']\ndriver = 'claude-code'\npty = true\n", "only apply"),
        ("[models.x]\nargv = ['sh']\npty = 'yes'\n", "pty must be true or false"),
        ("[models.x]\nargv = ['sh']\npermission_mode = 'plan'\n", "need a driver"),
        (
            "[models.x]\nargv = ['sh']\ndriver = 'claude-code'\npermission_mode = 'plan'\n"
            "allowed_permission_modes = ['default']\n",
            "not in allowed_permission_modes",
        ),
        (
            "[models.x]\nargv = ['sh']\ndriver = 'codex'\npermission_prompts = true\n",
            "permission_prompts needs claude-code",
        ),
        ("[models.x]\nargv = ['sh']\ncolour = 'red'\n", "unknown keys"),
        ("[models.x]\nargv = ['sh']\nenv = { 'A-B' = '1' }\n", "env must map"),
        ("[other]\n", "unknown top-level"),
        ("not toml [", "not valid TOML"),
    ],
)
def test_bad_model_files(text: str, error: str) -> None:
    with pytest.raises(ModelConfigError, match=error):
        parse_models(text, source=Path("/x/models.toml"))


def test_settings_defaults_and_overrides(tmp_path: Path) -> None:
    env = {"TEAMDASH_STATE_DIR": str(tmp_path / "state"), "PATH": "/bin"}
    s = RunnerSettings.from_env(Env(env))
    assert s.max_agents == 8 and s.max_agents_per_user == 4
    assert s.workspace_root == (tmp_path / "state" / "workspaces").resolve()
    assert s.workspace_root.is_dir()
    assert (s.heartbeat_s, s.ttl_s, s.terminate_grace_s, s.stats_interval_s) == (2, 6, 5, 1)
    assert s.default_memory_mb is None
    assert str(os.getpid()) in s.runner_id
    assert s.agent_path == "/bin"
    s = RunnerSettings.from_env(
        Env(
            {
                **env,
                "TEAMDASH_RUNNER_ID": "r-1",
                "TEAMDASH_RUNNER_MAX_AGENTS": "2",
                "TEAMDASH_AGENT_DEFAULT_MEMORY_MB": "256",
                "TEAMDASH_MODELS_FILE": str(MODELS_FILE),
                "ANTHROPIC_API_KEY": "not-passed-for-test-models",
            }
        )
    )
    assert (s.runner_id, s.max_agents, s.default_memory_mb) == ("r-1", 2, 256)
    assert "echo" in s.models.models
    assert s.passthrough_env == {}
    assert RunnerSettings.from_env(Env({**env, "ANTHROPIC_API_KEY": "k"})).passthrough_env == {
        "ANTHROPIC_API_KEY": "k"
    }
    # A credential missing from the environment comes from its secret file (compose).
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "claude_code_oauth_token").write_text("oauth-token\n")
    with_secret = RunnerSettings.from_env(Env({**env, "TEAMDASH_SECRETS_DIR": str(secrets)}))
    assert with_secret.passthrough_env == {"CLAUDE_CODE_OAUTH_TOKEN": "oauth-token"}
    assert with_secret.agent_home_root == (tmp_path / "state" / "agent-homes").resolve()
    with pytest.raises(ConfigError):
        RunnerSettings.from_env(Env({**env, "TEAMDASH_RUNNER_ID": "a b"}))
    with pytest.raises(ConfigError):
        RunnerSettings.from_env(
            Env({**env, "TEAMDASH_RUNNER_TTL_S": "1", "TEAMDASH_RUNNER_HEARTBEAT_S": "2"})
        )
    with pytest.raises(ConfigError, match="TEAMDASH_MODELS_FILE"):
        RunnerSettings.from_env(Env({**env, "TEAMDASH_MODELS_FILE": str(tmp_path / "none.toml")}))


# ---------------------------------------------------------------------------
# Output pacing by bytes, and the Redis health the reaper's guard relies on
# ---------------------------------------------------------------------------


def test_output_pacer_bounds_bytes_as_well_as_events() -> None:
    # 1 MiB/s: few events (16 KiB pieces without newlines) but many bytes are paced too.
    pacer = OutputPacer(20_000, 1024 * 1024)
    assert pacer.delay_after(64, now=0.0, nbytes=1024 * 1024) == 0.0  # a second's burst
    assert pacer.delay_after(4, now=0.0, nbytes=512 * 1024) == pytest.approx(0.5)
    assert pacer.delay_after(0, now=0.5, nbytes=0) == pytest.approx(0.0, abs=1e-9)
    # Whichever limit is further in debt decides.
    events_only = OutputPacer(100)
    assert events_only.delay_after(150, now=0.0, nbytes=10**9) == pytest.approx(0.5)
    bytes_only = OutputPacer(0, 1000)
    assert bytes_only.delay_after(10**6, now=0.0, nbytes=3000) == pytest.approx(2.0)
    # The refill is capped at one second's worth.
    assert bytes_only.delay_after(0, now=100.0, nbytes=1000) == pytest.approx(0.0, abs=1e-9)
    assert bytes_only.delay_after(0, now=100.0, nbytes=1000) == pytest.approx(1.0)


def test_output_bytes_setting(tmp_path: Path) -> None:
    env = {"TEAMDASH_STATE_DIR": str(tmp_path / "state"), "PATH": "/bin"}
    assert RunnerSettings.from_env(Env(env)).output_bytes_per_second == 1024 * 1024
    custom = {**env, "TEAMDASH_AGENT_OUTPUT_BYTES_PER_SECOND": "0"}
    assert RunnerSettings.from_env(Env(custom)).output_bytes_per_second == 0


def test_redis_health_counts_time_since_the_last_failure() -> None:
    health = RedisHealth()
    assert health.ok_for(5.0) == math.inf  # never failed
    health.failed(10.0)
    assert health.ok_for(10.0) == 0.0
    assert health.ok_for(13.5) == 3.5
    health.failed(12.0)  # a later failure restarts the count
    assert health.ok_for(13.5) == 1.5
    assert health.failures == 2
