"""``TEAMDASH_JWT_SECRET_FILE``: the JWT secret read from a file (compose's file secret), by
the gateway, ``teamdash token`` and ``teamdash up``; and ``up --lb`` without HAProxy."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.settings import GatewaySettings
from shared.settings import ConfigError, Env
from shared.tokens import TokenVerifier, jwt_secret
from tests.helpers import ROOT, t

SECRET = "s3cret-from-a-file-with-enough-entropy-0123456789"


def secret_file(tmp_path: Path, text: str = SECRET + "\n", name: str = "jwt_secret") -> Path:
    path = tmp_path / "secrets" / name
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)
    return path


def test_the_gateway_reads_the_secret_from_the_file(tmp_path: Path) -> None:
    state = tmp_path / "state"
    env = Env(
        {"TEAMDASH_JWT_SECRET_FILE": str(secret_file(tmp_path)), "TEAMDASH_STATE_DIR": str(state)}
    )
    assert GatewaySettings.from_env(env).jwt_key == SECRET
    assert not (state / "jwt-secret").exists(), "no dev secret is generated"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"TEAMDASH_JWT_SECRET": SECRET, "TEAMDASH_JWT_SECRET_FILE": "{file}"}, "not both"),
        ({"TEAMDASH_JWT_SECRET_FILE": "{missing}"}, "cannot be read"),
        ({"TEAMDASH_JWT_SECRET_FILE": "{short}"}, "at least 32 characters"),
    ],
)
def test_unusable_secret_files_are_configuration_errors(
    tmp_path: Path, env: dict[str, str], message: str
) -> None:
    paths = {
        "file": str(secret_file(tmp_path)),
        "missing": str(tmp_path / "nope"),
        "short": str(secret_file(tmp_path, "too-short\n", "short")),
    }
    resolved = {k: v.format(**paths) for k, v in env.items()}
    with pytest.raises(ConfigError, match=message):
        jwt_secret(Env(resolved), tmp_path)


def test_teamdash_token_signs_with_the_file_secret(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TEAMDASH_")}
    env.update(
        TEAMDASH_JWT_SECRET_FILE=str(secret_file(tmp_path)),
        TEAMDASH_STATE_DIR=str(tmp_path / "state"),
    )
    out = subprocess.run(
        [sys.executable, "-m", "shared.cli", "token", "--user", "dora"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=t(30),
        check=True,
    )
    identity = TokenVerifier(SECRET).verify(out.stdout.strip().splitlines()[-1])
    assert identity.user_id == "dora"


def test_up_lb_without_haproxy_says_how_to_install_it(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TEAMDASH_")}
    env.update(PATH=str(tmp_path), TEAMDASH_STATE_DIR=str(tmp_path / "state"))
    out = subprocess.run(
        [sys.executable, "-m", "shared.cli", "up", "--lb"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=t(30),
        check=False,
    )
    assert out.returncode == 1
    assert "apt-get install haproxy" in out.stderr
