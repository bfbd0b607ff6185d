"""compose.yaml, the Dockerfile and .dockerignore: valid for a real Compose implementation,
and saying what the deployment needs (one Dockerfile, a runner target with the pinned Claude
Code CLI, replicas behind HAProxy, health checks, the JWT secret and the API key as file
secrets, documented settings)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from agent_runner.drivers.claude import CLAUDE_CODE_VERSION
from agent_runner.models import load_models
from agent_runner.settings import RunnerSettings
from shared.cli import build_parser
from shared.redis_server import PUBSUB_BUFFER_LIMIT
from shared.settings import Env
from tests.deploy.conftest import (
    COMPOSE_FILE,
    DOCKERFILE,
    HAPROXY_CFG,
    HAPROXY_COMPOSE_CFG,
    TEAMDASH_SERVICES,
    compose,
    dockerfile_stages,
    documented_variables,
    haproxy_variables,
    require,
    service_env,
)
from tests.helpers import ROOT, t


def test_docker_compose_accepts_the_file() -> None:
    binary = require("docker-compose", "docker-compose")
    result = subprocess.run(
        [binary, "-f", str(COMPOSE_FILE), "config", "-q"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=t(60),
        check=False,
    )
    assert result.returncode == 0, result.stderr + result.stdout
    services = subprocess.run(
        [binary, "-f", str(COMPOSE_FILE), "config", "--services"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=t(60),
        check=True,
    ).stdout.split()
    assert set(services) == {"redis", "haproxy", *TEAMDASH_SERVICES}


def test_one_dockerfile_builds_every_service_and_the_command_picks_the_service() -> None:
    services = compose()["services"]
    stages = dockerfile_stages()
    for name, command in TEAMDASH_SERVICES.items():
        service = services[name]
        assert service["build"]["context"] == "."
        assert service["build"].get("dockerfile", "Dockerfile") == "Dockerfile"
        assert service["build"]["target"] in stages, service["build"]
        assert service["command"] == [command]
        build_parser().parse_args(service["command"])  # a real teamdash subcommand
        assert service["depends_on"]["redis"]["condition"] == "service_healthy"
    # Gateway and collector share one image; the runner's target is that one plus its CLIs.
    assert services["gateway"]["image"] == services["metrics-collector"]["image"]
    assert services["gateway"]["build"] == services["metrics-collector"]["build"]
    runner = services["agent-runner"]
    assert runner["image"] != services["gateway"]["image"]
    assert stages[runner["build"]["target"]].base == services["gateway"]["build"]["target"]


def test_the_runner_image_has_node_git_and_the_pinned_claude_code_cli() -> None:
    runner = dockerfile_stages()[compose()["services"]["agent-runner"]["build"]["target"]]
    # One place for the version: the build argument's default is the driver's constant.
    assert runner.arg_default("CLAUDE_CODE_VERSION") == CLAUDE_CODE_VERSION
    runs = " && ".join(line for line in runner.instructions if line.startswith("RUN "))
    assert '"@anthropic-ai/claude-code@${CLAUDE_CODE_VERSION}"' in runs
    assert "npm install -g" in runs and "apt-get install" in runs and " git " in runs
    # The build fails unless the installed CLI reports that very version.
    assert 'claude --version | grep -F "${CLAUDE_CODE_VERSION}"' in runs
    # Node >= 22 (the CLI's engines), from Node's official image of the same Debian release.
    [node_copy] = [
        line for line in runner.instructions if line.startswith("COPY --from=") and "/node " in line
    ]
    node_stage = dockerfile_stages()[node_copy.split()[1].removeprefix("--from=")]
    image, tag = node_stage.base.split(":")
    assert image == "node" and int(tag.split("-")[0]) >= 22
    assert tag.split("-")[1] in runner_base_release(), (node_stage.base, runner_base_release())
    # It still runs as the service user, and runs the runner.
    assert runner.last("USER") == "teamdash:teamdash"
    assert runner.last("CMD") == '["runner"]'
    # The default models' program is what the image installs.
    for name in ("claude-3-opus", "claude-3-sonnet"):
        assert load_models().get(name).program == "claude"


def runner_base_release() -> str:
    """The Debian release of the runtime image (``python:3.11-slim-bookworm`` → bookworm)."""
    return dockerfile_stages()["runtime"].base.rsplit("-", 1)[1]


def test_the_anthropic_api_key_is_a_file_secret_the_runner_reads(tmp_path: Path) -> None:
    doc = compose()
    assert doc["secrets"]["anthropic_api_key"]["file"].startswith("./deploy/secrets/")
    runner = doc["services"]["agent-runner"]
    [secret] = runner["secrets"]
    env = service_env(runner)
    assert env["TEAMDASH_SECRETS_DIR"] == "/run/secrets"
    # Compose mounts it as /run/secrets/<secret name>: the runner's settings, built from the
    # service's environment with that folder here, hand the key to the default models.
    mounted = tmp_path / "run-secrets"
    mounted.mkdir()
    (mounted / secret).write_text("sk-ant-test\n")
    env.pop("TEAMDASH_RUNNER_ID")  # "{hostname}" is filled in by `teamdash runner`
    settings = RunnerSettings.from_env(
        Env(
            {
                **env,
                "TEAMDASH_SECRETS_DIR": str(mounted),
                "TEAMDASH_STATE_DIR": str(tmp_path / "state"),
                "TEAMDASH_WORKSPACE_ROOT": str(tmp_path / "workspaces"),
            }
        )
    )
    assert settings.passthrough_env == {"ANTHROPIC_API_KEY": "sk-ant-test"}
    assert "ANTHROPIC_API_KEY" in settings.models.get("claude-3-sonnet").pass_env
    for service in doc["services"].values():
        assert "ANTHROPIC_API_KEY" not in service_env(service), "no key in plain environment"
    # Only the runner gets it.
    for name in ("gateway", "metrics-collector"):
        assert "anthropic_api_key" not in doc["services"][name].get("secrets", [])


def test_redis_keeps_busy_gateways_subscribed_as_the_embedded_one_does() -> None:
    command = compose()["services"]["redis"]["command"]
    at = command.index("--client-output-buffer-limit")
    assert tuple(command[at + 1 : at + 5]) == PUBSUB_BUFFER_LIMIT
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"


def test_gateways_are_replicated_behind_haproxy_on_3001() -> None:
    services = compose()["services"]
    gateway, haproxy = services["gateway"], services["haproxy"]
    assert gateway["deploy"]["replicas"] >= 2
    assert "ports" not in gateway, "gateways are reached through HAProxy only"
    assert haproxy["image"].split(":")[0] == "haproxy"
    assert haproxy["depends_on"]["gateway"]["condition"] == "service_healthy"
    assert "3001:3001" in haproxy["ports"]
    # The very files deploy/ holds, the shared one first.
    mounts = [v.split(":")[:2] for v in haproxy["volumes"]]
    assert ["./deploy/haproxy.cfg", "/usr/local/etc/haproxy/haproxy.cfg"] in mounts
    assert ["./deploy/haproxy-compose.cfg", "/usr/local/etc/haproxy/haproxy-compose.cfg"] in mounts
    command = haproxy["command"]
    files = [command[i + 1] for i, arg in enumerate(command) if arg == "-f"]
    assert files == [
        "/usr/local/etc/haproxy/haproxy.cfg",
        "/usr/local/etc/haproxy/haproxy-compose.cfg",
    ]
    # The compose backend finds the replicas under the service's DNS name and port.
    env = service_env(haproxy)
    assert env["TEAMDASH_LB_GATEWAYS"] == f"gateway:{service_env(gateway)['TEAMDASH_GATEWAY_PORT']}"
    assert int(env["TEAMDASH_LB_GATEWAY_SLOTS"]) >= gateway["deploy"]["replicas"]
    assert env["TEAMDASH_LB_BIND"] == ":3001"


def test_redis_is_the_official_7_image_with_a_ping_healthcheck() -> None:
    redis = compose()["services"]["redis"]
    name, tag = redis["image"].split(":")
    assert name == "redis" and tag.startswith("7")
    assert redis["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]


def test_every_service_has_a_healthcheck_with_the_right_command() -> None:
    services = compose()["services"]
    for name, command in TEAMDASH_SERVICES.items():
        test = services[name]["healthcheck"]["test"]
        assert test == ["CMD", "teamdash", "health", command], (name, test)
        build_parser().parse_args(test[2:])
    for name in ("redis", *TEAMDASH_SERVICES):
        health = services[name]["healthcheck"]
        assert health["interval"] and health["timeout"] and health["retries"]


def test_the_jwt_secret_is_a_file_secret_the_gateway_reads() -> None:
    doc = compose()
    secrets = doc["secrets"]
    assert set(secrets) == {"jwt_secret", "anthropic_api_key"}
    assert secrets["jwt_secret"]["file"].startswith("./deploy/secrets/")
    gateway = doc["services"]["gateway"]
    assert gateway["secrets"] == ["jwt_secret"]
    env = service_env(gateway)
    assert env["TEAMDASH_JWT_SECRET_FILE"] == "/run/secrets/jwt_secret"
    assert "TEAMDASH_JWT_SECRET" not in env
    for service in doc["services"].values():
        assert "TEAMDASH_JWT_SECRET" not in service_env(service), "no secret in plain environment"


def test_workspaces_live_on_a_named_volume() -> None:
    doc = compose()
    assert "workspaces" in doc["volumes"]
    runner = doc["services"]["agent-runner"]
    root = service_env(runner)["TEAMDASH_WORKSPACE_ROOT"]
    assert f"workspaces:{root}" in runner["volumes"]
    # The image creates that folder owned by the service user, so the volume starts so.
    assert f"mkdir -p /data/state {root}" in DOCKERFILE.read_text()


def test_every_variable_the_stack_sets_is_documented() -> None:
    documented = documented_variables()
    services = compose()["services"]
    for name in TEAMDASH_SERVICES:
        missing = set(service_env(services[name])) - documented
        assert not missing, f"{name}: {sorted(missing)} not in the README's configuration table"
    lb_env = set(service_env(services["haproxy"]))
    lb_used = haproxy_variables(HAPROXY_CFG) | haproxy_variables(HAPROXY_COMPOSE_CFG)
    assert lb_env <= lb_used, f"set for haproxy but read by no config: {sorted(lb_env - lb_used)}"
    assert lb_used <= documented, f"undocumented: {sorted(lb_used - documented)}"
    dockerfile_env = {
        word.split("=")[0]
        for word in DOCKERFILE.read_text().replace("\\\n", " ").split()
        if word.startswith("TEAMDASH_") and "=" in word
    }
    assert dockerfile_env and dockerfile_env <= documented, sorted(dockerfile_env - documented)


def test_dockerfile_is_small_non_root_and_installs_without_test_extras() -> None:
    text = DOCKERFILE.read_text()
    assert dockerfile_stages()["runtime"].base.startswith("python:3.11-slim")
    user_lines = [line for line in text.splitlines() if line.startswith("USER ")]
    assert user_lines and not user_lines[-1].split()[1].startswith(("root", "0"))
    assert 'ENTRYPOINT ["teamdash"]' in text
    assert "pip install" in text and "[test]" not in text
    # Health checks differ per service: compose.yaml defines them.
    assert not [line for line in text.splitlines() if line.startswith("HEALTHCHECK")]


def test_dockerignore_keeps_the_context_to_the_packages() -> None:
    lines = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    assert allowed == {
        "pyproject.toml",
        "README.md",
        "shared",
        "gateway",
        "agent_runner",
        "metrics_collector",
    }
