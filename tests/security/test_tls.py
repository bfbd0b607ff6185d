"""wss:// served by the gateway itself, TLS 1.3 or nothing: a throwaway self-signed
certificate made at test time; a TLS 1.2-only client is refused, a TLS 1.3 client connects
and authenticates."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import os
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from shared.settings import ConfigError
from tests.gateway.conftest import token
from tests.helpers import t
from tests.wsclient import WSClient


def self_signed(folder: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    folder.mkdir(parents=True, exist_ok=True)
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_file.chmod(0o600)
    return cert_file, key_file


def client_context(cert_file: Path, *, maximum: ssl.TLSVersion | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(cert_file))
    if maximum is not None:
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.maximum_version = maximum
    return context


async def test_wss_with_tls13_only(make_gateway, tmp_path):
    cert_file, key_file = self_signed(tmp_path / "tls")
    gw = await make_gateway(
        TEAMDASH_TLS_CERT_FILE=str(cert_file), TEAMDASH_TLS_KEY_FILE=str(key_file)
    )
    url = f"wss://127.0.0.1:{gw.port}{gw.settings.path}"

    client = await WSClient.authed(url, token("alice"), ssl=client_context(cert_file))
    assert client.status is not None and client.status["userId"] == "alice"
    ssl_object = client.ws.transport.get_extra_info("ssl_object")
    assert ssl_object.version() == "TLSv1.3"
    assert (await client.request("subscribe:metrics", {}))["success"]
    await client.close()

    # The server refuses the TLS 1.2 handshake (a protocol_version alert, or a reset
    # depending on timing): no WebSocket, no auth.
    for _ in range(3):
        with pytest.raises((ssl.SSLError, ConnectionResetError)):
            await WSClient.open(url, ssl=client_context(cert_file, maximum=ssl.TLSVersion.TLSv1_2))
    # Plain ws:// to the TLS port does not get a WebSocket either.
    with pytest.raises(Exception):  # noqa: B017 - any handshake failure
        await WSClient.open(f"ws://127.0.0.1:{gw.port}{gw.settings.path}")

    # The compose health check speaks TLS to a TLS gateway.
    env = {k: v for k, v in os.environ.items() if not k.startswith("TEAMDASH_")}
    health = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "shared.cli", "health", "gateway", "--port", str(gw.port)],
        env={**env, "TEAMDASH_TLS_CERT_FILE": str(cert_file)},
        capture_output=True,
        text=True,
        timeout=t(30),
        check=False,
    )
    assert health.returncode == 0, health.stderr
    assert health.stdout.startswith("ok: gateway"), health.stdout


async def test_tls_settings_must_come_in_pairs(make_gateway, tmp_path):
    cert_file, _ = self_signed(tmp_path / "tls")
    with pytest.raises(ConfigError, match="both"):
        await make_gateway(TEAMDASH_TLS_CERT_FILE=str(cert_file))
    with pytest.raises(ConfigError, match="cannot be read"):
        await make_gateway(
            TEAMDASH_TLS_CERT_FILE=str(cert_file),
            TEAMDASH_TLS_KEY_FILE=str(tmp_path / "missing.pem"),
        )
