"""Tokens: HS256, RS256 and ES256 gateways; every forgery an attacker would try; issuer and
audience; ``teamdash token --private-key``; expiry enforced on live connections, with a
warning first, and in-band refresh."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import jwt
import pytest

from agent_runner import events
from shared.errors import ErrorCode
from shared.tokens import TokenVerifier
from tests.conftest import JWT_SECRET
from tests.gateway.conftest import token, ws_url
from tests.helpers import ROOT, t
from tests.security.conftest import (
    KeyPair,
    auth_outcome,
    b64url,
    closed,
    hand_made_jwt,
    hmac_with,
)
from tests.wsclient import WSClient


def claims(user: str = "alice", ttl: int = 600, **extra: object) -> dict[str, object]:
    now = int(time.time())
    return {"sub": user, "roles": ["operator"], "iat": now, "exp": now + ttl, **extra}


async def asymmetric_gateway(make_gateway, algorithm: str, keys: KeyPair, **env: str):
    return await make_gateway(
        TEAMDASH_JWT_ALGORITHM=algorithm, TEAMDASH_JWT_PUBLIC_KEY_FILE=str(keys.public_file), **env
    )


@pytest.mark.parametrize("algorithm", ["RS256", "ES256"])
async def test_asymmetric_gateway_accepts_tokens_of_its_private_key(
    make_gateway, rsa_keys, ec_keys, algorithm
):
    keys = rsa_keys if algorithm == "RS256" else ec_keys
    gw = await asymmetric_gateway(make_gateway, algorithm, keys)
    good = jwt.encode(claims("alice"), keys.private, algorithm=algorithm)
    answer, client = await auth_outcome(ws_url(gw), good)
    assert answer["type"] == "connection:status", answer
    assert answer["payload"]["userId"] == "alice"
    await client.close()


def forgeries(
    rsa_keys: KeyPair, attacker: KeyPair, ec_keys: KeyPair
) -> dict[str, tuple[str, ErrorCode]]:
    """What an attacker sends to an RS256 gateway, and the code each must get."""
    good = jwt.encode(claims("alice"), rsa_keys.private, algorithm="RS256")
    head, body, sig = good.split(".")
    admin_body = b64url(json.dumps(claims("alice", roles=["admin"])).encode())
    none_head = b64url(b'{"alg":"none"}')
    attacker_jwk = jwt.algorithms.RSAAlgorithm.to_jwk(attacker.private.public_key(), as_dict=True)
    return {
        # alg "none", with and without a signature, in several spellings
        "alg-none": (
            hand_made_jwt({"alg": "none", "typ": "JWT"}, claims("alice")),
            ErrorCode.AUTH_FAILED,
        ),
        "alg-None": (hand_made_jwt({"alg": "None"}, claims("alice")), ErrorCode.AUTH_FAILED),
        "alg-none-with-signature": (
            f"{none_head}.{body}.{sig}",
            ErrorCode.AUTH_FAILED,
        ),
        # algorithm confusion: HS256 keyed with the gateway's own public key (PEM and DER)
        "hs256-with-public-key-pem": (
            hand_made_jwt(
                {"alg": "HS256", "typ": "JWT"},
                claims("mallory", roles=["admin"]),
                hmac_with(rsa_keys.public_pem),
            ),
            ErrorCode.AUTH_FAILED,
        ),
        "hs256-with-public-key-pem-stripped": (
            hand_made_jwt(
                {"alg": "HS256"}, claims("mallory"), hmac_with(rsa_keys.public_pem.strip())
            ),
            ErrorCode.AUTH_FAILED,
        ),
        # HS256 with the shared secret the deployment also has in its environment
        "hs256-with-the-shared-secret": (
            jwt.encode(claims("mallory", roles=["admin"]), JWT_SECRET, algorithm="HS256"),
            ErrorCode.AUTH_FAILED,
        ),
        # payload tampered with, signature kept
        "tampered-roles": (f"{head}.{admin_body}.{sig}", ErrorCode.AUTH_FAILED),
        "tampered-sub": (
            f"{head}.{b64url(json.dumps(claims('root')).encode())}.{sig}",
            ErrorCode.AUTH_FAILED,
        ),
        "truncated-signature": (f"{head}.{body}.{sig[:-4]}", ErrorCode.AUTH_FAILED),
        # signed with another key, also when it announces itself in the header
        "wrong-key": (
            jwt.encode(claims("alice"), attacker.private, algorithm="RS256"),
            ErrorCode.AUTH_FAILED,
        ),
        "embedded-jwk": (
            jwt.encode(
                claims("alice"), attacker.private, algorithm="RS256", headers={"jwk": attacker_jwk}
            ),
            ErrorCode.AUTH_FAILED,
        ),
        "kid-pointing-elsewhere": (
            jwt.encode(
                claims("alice"),
                attacker.private,
                algorithm="RS256",
                headers={"kid": "../../dev/null", "jku": "http://127.0.0.1:1/jwks"},
            ),
            ErrorCode.AUTH_FAILED,
        ),
        "another-asymmetric-algorithm": (
            jwt.encode(claims("alice"), ec_keys.private, algorithm="ES256"),
            ErrorCode.AUTH_FAILED,
        ),
        # claims
        "expired": (
            jwt.encode(claims("alice", ttl=-10), rsa_keys.private, algorithm="RS256"),
            ErrorCode.TOKEN_EXPIRED,
        ),
        "lifetime-over-an-hour": (
            jwt.encode(claims("alice", ttl=3601), rsa_keys.private, algorithm="RS256"),
            ErrorCode.AUTH_FAILED,
        ),
        "iat-in-the-future": (
            jwt.encode(
                {**claims("alice"), "iat": int(time.time()) + 600, "exp": int(time.time()) + 1200},
                rsa_keys.private,
                algorithm="RS256",
            ),
            ErrorCode.AUTH_FAILED,
        ),
        "no-exp": (
            jwt.encode({"sub": "alice"}, rsa_keys.private, algorithm="RS256"),
            ErrorCode.AUTH_FAILED,
        ),
        "garbage": ("eyJhbGciOiJSUzI1NiJ9.e30.AAAA", ErrorCode.AUTH_FAILED),
    }


async def test_forged_tokens_are_refused_by_an_rs256_gateway(
    make_gateway, rsa_keys, attacker_rsa, ec_keys
):
    gw = await asymmetric_gateway(make_gateway, "RS256", rsa_keys)
    for name, (forged, code) in forgeries(rsa_keys, attacker_rsa, ec_keys).items():
        answer, client = await auth_outcome(ws_url(gw), forged)
        assert answer["type"] == "ack", (name, answer)
        assert answer["payload"]["success"] is False
        assert answer["payload"]["code"] == code, (name, answer["payload"])
        assert await closed(client) == (1008, code.name), name
    # and the real thing still works
    answer, client = await auth_outcome(
        ws_url(gw), jwt.encode(claims(), rsa_keys.private, algorithm="RS256")
    )
    assert answer["type"] == "connection:status"
    await client.close()


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
async def test_hs256_gateway_refuses_none_confusion_and_tampering(gateway, rsa_keys):
    good = token("alice")
    head, body, sig = good.split(".")
    cases = {
        "alg-none": hand_made_jwt({"alg": "none"}, claims("alice")),
        "rs256-with-attacker-key": jwt.encode(claims("alice"), rsa_keys.private, algorithm="RS256"),
        "tampered": f"{head}.{b64url(json.dumps(claims('alice', roles=['admin'])).encode())}.{sig}",
        "wrong-secret": jwt.encode(claims("alice"), "x" * 40, algorithm="HS256"),
        "hs512-with-the-right-secret": jwt.encode(claims("alice"), JWT_SECRET, algorithm="HS512"),
    }
    for name, forged in cases.items():
        answer, client = await auth_outcome(ws_url(gateway), forged)
        assert answer["type"] == "ack" and answer["payload"]["code"] == ErrorCode.AUTH_FAILED, name
        assert await closed(client) == (1008, "AUTH_FAILED"), name
    answer, client = await auth_outcome(ws_url(gateway), token("alice", now=time.time() - 7200))
    assert answer["payload"]["code"] == ErrorCode.TOKEN_EXPIRED
    assert await closed(client) == (1008, "TOKEN_EXPIRED")


async def test_issuer_and_audience_are_checked_when_configured(make_gateway, ec_keys):
    gw = await asymmetric_gateway(
        make_gateway,
        "ES256",
        ec_keys,
        TEAMDASH_JWT_ISSUER="https://idp.example",
        TEAMDASH_JWT_AUDIENCE="teamdash",
    )

    def sign(c: dict[str, object]) -> str:  # JWS directly: PyJWT's encode refuses a list iss
        return jwt.PyJWS().encode(json.dumps(c).encode(), ec_keys.private, algorithm="ES256")

    refused = {
        "no-iss-no-aud": sign(claims()),
        "no-aud": sign(claims(iss="https://idp.example")),
        "no-iss": sign(claims(aud="teamdash")),
        "wrong-iss": sign(claims(iss="https://evil.example", aud="teamdash")),
        "iss-prefix": sign(claims(iss="https://idp.example.evil", aud="teamdash")),
        "iss-substring": sign(claims(iss="idp", aud="teamdash")),
        "iss-as-list": sign(claims(iss=["https://idp.example"], aud="teamdash")),
        "wrong-aud": sign(claims(iss="https://idp.example", aud="other")),
    }
    for name, forged in refused.items():
        answer, client = await auth_outcome(ws_url(gw), forged)
        assert answer["type"] == "ack" and answer["payload"]["code"] == ErrorCode.AUTH_FAILED, (
            name,
            answer,
        )
        await closed(client)
    for good in (
        sign(claims(iss="https://idp.example", aud="teamdash")),
        sign(claims(iss="https://idp.example", aud=["other", "teamdash"])),
    ):
        answer, client = await auth_outcome(ws_url(gw), good)
        assert answer["type"] == "connection:status", answer
        await client.close()


def _teamdash_token(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TEAMDASH_")}
    return subprocess.run(
        [sys.executable, "-m", "shared.cli", "token", *args],
        cwd=ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=t(30),
    )


async def test_teamdash_token_with_a_private_key(make_gateway, rsa_keys, ec_keys, tmp_path):
    env = {
        "TEAMDASH_STATE_DIR": str(tmp_path / "state"),
        "TEAMDASH_JWT_ISSUER": "teamdash-dev",
        "TEAMDASH_JWT_AUDIENCE": "dashboard",
    }
    for algorithm, keys in (("RS256", rsa_keys), ("ES256", ec_keys)):
        out = _teamdash_token(
            env, "--user", "olga", "--role", "operator", "--private-key", str(keys.private_file)
        )
        assert out.returncode == 0, out.stderr
        minted = out.stdout.strip().splitlines()[-1]
        assert jwt.get_unverified_header(minted)["alg"] == algorithm
        identity = TokenVerifier(
            keys.public_pem.decode(), (algorithm,), issuer="teamdash-dev", audience="dashboard"
        ).verify(minted)
        assert identity.user_id == "olga" and identity.roles == frozenset({"operator"})
        gw = await asymmetric_gateway(
            make_gateway,
            algorithm,
            keys,
            TEAMDASH_JWT_ISSUER="teamdash-dev",
            TEAMDASH_JWT_AUDIENCE="dashboard",
        )
        client = await WSClient.authed(ws_url(gw), minted)
        await client.close()
    # An asymmetric deployment without --private-key: a clear error, not an HS256 token.
    out = _teamdash_token({**env, "TEAMDASH_JWT_ALGORITHM": "RS256"})
    assert out.returncode == 2 and "--private-key" in out.stderr
    # A key that does not match the configured algorithm.
    out = _teamdash_token(
        {**env, "TEAMDASH_JWT_ALGORITHM": "ES256"}, "--private-key", str(rsa_keys.private_file)
    )
    assert out.returncode == 2 and "EC" in out.stderr
    out = _teamdash_token(env, "--ttl", "7200")
    assert out.returncode == 2 and "3600" in out.stderr


async def test_gateway_refuses_to_start_with_a_mismatched_key(
    make_gateway, rsa_keys, ec_keys, tmp_path
):
    from shared.settings import ConfigError

    with pytest.raises(ConfigError, match="EC"):
        await asymmetric_gateway(make_gateway, "ES256", rsa_keys)
    with pytest.raises(ConfigError, match="needs TEAMDASH_JWT_PUBLIC_KEY_FILE"):
        await make_gateway(TEAMDASH_JWT_ALGORITHM="RS256")
    with pytest.raises(ConfigError, match="RS256 or ES256"):
        await make_gateway(TEAMDASH_JWT_PUBLIC_KEY_FILE=str(rsa_keys.public_file))
    with pytest.raises(ConfigError, match="PEM"):
        bogus = tmp_path / "bogus.pem"
        bogus.write_text("not a key")
        await make_gateway(TEAMDASH_JWT_ALGORITHM="RS256", TEAMDASH_JWT_PUBLIC_KEY_FILE=str(bogus))


async def test_a_token_expiring_on_a_live_connection_is_warned_then_closed(make_gateway):
    gw = await make_gateway(TEAMDASH_TOKEN_EXPIRY_WARNING_S="1")
    client = await WSClient.authed(ws_url(gw), token("alice", ttl_s=2))
    await client.subscribe("metrics")
    warning = await client.recv_type("system:alert", timeout=3)
    assert warning["payload"]["level"] == "warning"
    assert warning["payload"]["category"] == "security"
    assert "auth" in warning["payload"]["message"]
    expires_ms = warning["payload"]["details"]["expiresAt"]
    assert "topic" not in (warning.get("metadata") or {}), (
        "a connection-only notice, not a topic event"
    )
    final = await client.recv_type("system:alert", timeout=3)
    assert final["payload"]["level"] == "error" and final["payload"]["category"] == "security"
    assert final["payload"]["details"]["code"] == ErrorCode.TOKEN_EXPIRED
    assert final["payload"]["details"]["error"] == "TOKEN_EXPIRED"
    assert time.time() * 1000 >= expires_ms - 50
    assert await closed(client) == (1008, "TOKEN_EXPIRED")


async def test_a_fresh_auth_in_time_keeps_the_connection(make_gateway):
    gw = await make_gateway(TEAMDASH_TOKEN_EXPIRY_WARNING_S="2")
    client = await WSClient.authed(ws_url(gw), token("alice", ttl_s=3))
    await client.recv_type("system:alert", timeout=3)  # the warning: 1-2 s left
    # A refresh for another user, or with a forged token, changes nothing...
    ack = await client.request("auth", {"token": token("mallory"), "clientId": "c"})
    assert ack["code"] == ErrorCode.AUTH_FAILED
    ack = await client.request(
        "auth", {"token": jwt.encode(claims("alice"), "y" * 40, "HS256"), "clientId": "c"}
    )
    assert ack["code"] == ErrorCode.AUTH_FAILED
    # ...a fresh token of the same user does.
    ack = await client.request("auth", {"token": token("alice", ttl_s=3600), "clientId": "c"})
    assert ack["success"] and ack["result"]["expiresAt"] > (time.time() + 3000) * 1000
    late = await client.collect(t(3))
    assert not [m for m in late if m["type"] == "system:alert"], late
    assert (await client.request("subscribe:logs", {}))["success"]
    await client.close()


async def test_a_failed_refresh_does_not_extend_the_old_token(make_gateway):
    gw = await make_gateway(TEAMDASH_TOKEN_EXPIRY_WARNING_S="0")
    client = await WSClient.authed(ws_url(gw), token("alice", ttl_s=2))
    ack = await client.request(
        "auth", {"token": token("alice", now=time.time() - 7200), "clientId": "c"}
    )
    assert ack["code"] == ErrorCode.TOKEN_EXPIRED
    assert await closed(client, timeout=4) == (1008, "TOKEN_EXPIRED")


async def test_a_refresh_with_fewer_rights_narrows_what_the_connection_sees(make_gateway, bus):
    gw = await make_gateway()
    client = await WSClient.authed(ws_url(gw), token("alice", roles=("admin",)))
    await client.subscribe("agent")  # lifecycle of every agent, as an admin
    await bus.publish_many(events.status("agent-of-bob", "bob", "running", None))
    seen = await client.recv_type("agent:status")
    assert seen["payload"]["agentId"] == "agent-of-bob"
    ack = await client.request(
        "auth", {"token": token("alice", roles=("operator",)), "clientId": "c"}
    )
    assert ack["success"]
    await bus.publish_many(events.status("agent-of-bob", "bob", "stopped", None))
    await bus.publish_many(events.status("agent-of-alice", "alice", "running", None))
    mine = await client.recv_type("agent:status")
    assert mine["payload"]["agentId"] == "agent-of-alice", "bob's agent is no longer visible"
    await client.close()


def test_cli_client_tokens_carry_the_configured_issuer_and_audience(monkeypatch, tmp_path):
    """`teamdash agents` & co. mint their own dev token when none is given: it must pass a
    gateway that checks `iss` and `aud`."""
    import argparse

    from shared.cli import _client_token

    monkeypatch.delenv("TEAMDASH_TOKEN", raising=False)
    monkeypatch.setenv("TEAMDASH_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("TEAMDASH_JWT_SECRET", "s" * 32)
    monkeypatch.setenv("TEAMDASH_JWT_ISSUER", "teamdash-dev")
    monkeypatch.setenv("TEAMDASH_JWT_AUDIENCE", "dashboard")
    provider = _client_token(argparse.Namespace(token=None, user="ops"))
    assert callable(provider)
    verifier = TokenVerifier("s" * 32, ("HS256",), issuer="teamdash-dev", audience="dashboard")
    identity = verifier.verify(provider())
    assert identity.user_id == "ops" and identity.is_admin
