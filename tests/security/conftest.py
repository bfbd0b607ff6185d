"""Security tests: real in-process gateways (two or three replicas on one Redis where a limit
must hold across them), real runner processes where agents are involved, real WebSocket
clients, and tokens, keys and certificates made the way an attacker or an operator would
make them (PyJWT and ``cryptography``, generated at test time)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from websockets.exceptions import ConnectionClosed

from tests.e2e.conftest import runner_env, start_runner  # noqa: F401 - fixtures
from tests.gateway.conftest import gateway, make_gateway  # noqa: F401 - fixtures
from tests.helpers import t
from tests.wsclient import WSClient


@dataclass(frozen=True)
class KeyPair:
    private: Any
    private_pem: bytes
    public_pem: bytes
    public_file: Path
    private_file: Path


def _pair(private: Any, folder: Path, name: str) -> KeyPair:
    private_pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.pem").write_bytes(private_pem)
    (folder / f"{name}.pub.pem").write_bytes(public_pem)
    return KeyPair(
        private, private_pem, public_pem, folder / f"{name}.pub.pem", folder / f"{name}.pem"
    )


@pytest.fixture
def rsa_keys(tmp_path: Path) -> KeyPair:
    return _pair(
        rsa.generate_private_key(public_exponent=65537, key_size=2048), tmp_path / "keys", "rsa"
    )


@pytest.fixture
def ec_keys(tmp_path: Path) -> KeyPair:
    return _pair(ec.generate_private_key(ec.SECP256R1()), tmp_path / "keys", "ec")


@pytest.fixture
def attacker_rsa(tmp_path: Path) -> KeyPair:
    return _pair(
        rsa.generate_private_key(public_exponent=65537, key_size=2048), tmp_path / "evil", "rsa"
    )


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hand_made_jwt(header: dict[str, Any], claims: dict[str, Any], sign: Any = None) -> str:
    """A JWT assembled by hand (what PyJWT refuses to produce): ``sign(signing_input)`` →
    signature bytes, or no signature."""
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
    signature = sign(signing_input.encode()) if sign is not None else b""
    return f"{signing_input}.{b64url(signature)}"


def hmac_with(key: bytes) -> Any:
    return lambda data: hmac.new(key, data, hashlib.sha256).digest()


async def auth_outcome(url: str, token: str, **connect: Any) -> tuple[dict[str, Any], WSClient]:
    """Send ``auth`` with ``token``; the first answer (connection:status or ack) and the client."""
    client = await WSClient.open(url, **connect)
    await client.send("auth", {"token": token, "clientId": "attacker"})
    return await client.recv_type("connection:status", "ack"), client


async def closed(client: WSClient, timeout: float = 5.0) -> tuple[int | None, str | None]:
    """Read until the server closes; (code, reason)."""
    try:
        while True:
            await asyncio.wait_for(client.ws.recv(), t(timeout))
    except ConnectionClosed:
        pass
    return client.ws.close_code, client.ws.close_reason
