"""deploy/haproxy.cfg: one configuration for compose and the local topology, valid for
HAProxy with the environment each of them sets, and made for WebSockets."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from shared.topology import render_backend
from tests.deploy.conftest import HAPROXY_CFG, HAPROXY_COMPOSE_CFG, compose, require, service_env
from tests.helpers import ROOT, t


def haproxy_check(env: dict[str, str], *files: Path) -> subprocess.CompletedProcess[str]:
    binary = require("haproxy", "haproxy")
    argv = [binary, "-c"]
    for f in files:
        argv += ["-f", str(f)]
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TEAMDASH_LB_")}
    return subprocess.run(
        argv,
        env={**clean, **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=t(30),
        check=False,
    )


def test_valid_as_compose_runs_it() -> None:
    env = service_env(compose()["services"]["haproxy"])
    result = haproxy_check(env, HAPROXY_CFG, HAPROXY_COMPOSE_CFG)
    assert result.returncode == 0, result.stderr
    assert "WARNING" not in result.stderr, result.stderr


def test_valid_as_the_local_topology_runs_it(tmp_path: Path) -> None:
    backend = tmp_path / "gateways.cfg"
    backend.write_text(render_backend("127.0.0.1", [41001, 41002, 41003]))
    env = {
        "TEAMDASH_LB_BIND": "127.0.0.1:41000",
        "TEAMDASH_LB_STATS_SOCKET": str(tmp_path / "haproxy.sock"),
    }
    result = haproxy_check(env, HAPROXY_CFG, backend)
    assert result.returncode == 0, result.stderr
    assert "WARNING" not in result.stderr, result.stderr


def test_valid_with_no_variable_set() -> None:
    # Every variable has a default or guards an optional block.
    result = haproxy_check({}, HAPROXY_CFG, HAPROXY_COMPOSE_CFG)
    assert result.returncode == 0, result.stderr


def directives(path: Path) -> list[str]:
    """Non-comment lines, whitespace-normalized."""
    out = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            out.append(" ".join(line.split()))
    return out


def test_made_for_stateless_websocket_gateways() -> None:
    lines = directives(HAPROXY_CFG)
    for expected in (
        "mode http",
        "balance leastconn",
        "timeout tunnel 1h",
        "option forwardfor",
        "http-check expect status 200",
        'bind "${TEAMDASH_LB_BIND-:3001}"',
        "default_backend gateways",
    ):
        assert expected in lines, expected
    assert any(re.fullmatch(r"option httpchk GET /readyz( HTTP/1\.1)?", line) for line in lines)
    assert any(line.startswith("timeout client-fin ") for line in lines)
    assert any(line.startswith("default-server check ") for line in lines)
    everything = " ".join(lines + directives(HAPROXY_COMPOSE_CFG))
    # No stickiness, and nothing that would close WebSockets after the upgrade.
    for banned in (
        "cookie",
        "stick-table",
        "stick on",
        "balance source",
        "http-server-close",
        "httpclose",
    ):
        assert banned not in everything, banned


def test_compose_backend_discovers_replicas_through_docker_dns() -> None:
    lines = directives(HAPROXY_COMPOSE_CFG)
    assert "resolvers docker" in lines
    assert "nameserver docker 127.0.0.11:53" in lines
    templates = [line for line in lines if line.startswith("server-template ")]
    assert len(templates) == 1
    assert "resolvers docker" in templates[0] and "init-addr none" in templates[0]
    # Only the servers differ: balancing and checks come from the shared file.
    assert not [
        line
        for line in lines
        if line.startswith(("balance", "option", "http-check", "timeout tunnel"))
    ]


def test_local_backend_lists_one_server_per_gateway() -> None:
    text = render_backend("127.0.0.1", [5001, 5002])
    assert directives_of(text) == [
        "backend gateways",
        "server gw1 127.0.0.1:5001",
        "server gw2 127.0.0.1:5002",
    ]


def directives_of(text: str) -> list[str]:
    return [
        " ".join(line.split("#", 1)[0].split())
        for line in text.splitlines()
        if line.split("#", 1)[0].strip()
    ]
