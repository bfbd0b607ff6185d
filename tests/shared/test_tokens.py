"""JWT minting and verification (shared/tokens.py): every way a token is refused, and the
error code the client sees for it."""

from __future__ import annotations

import base64
import hmac
import json
import time
from pathlib import Path

import jwt
import pytest

from shared.errors import ErrorCode, TeamdashError
from shared.tokens import (
    ROLES,
    Identity,
    TokenVerifier,
    load_or_create_dev_secret,
    mint_token,
)

SECRET = "unit-test-secret-" + "0123456789abcdef" * 4  # 64+ bytes: no HMAC key warnings
verifier = TokenVerifier(SECRET)


def refused(token: str, v: TokenVerifier = verifier) -> TeamdashError:
    with pytest.raises(TeamdashError) as info:
        v.verify(token)
    return info.value


def raw(claims: dict[str, object], key: str = SECRET, algorithm: str = "HS256") -> str:
    return jwt.encode(claims, key, algorithm=algorithm)


def test_good_token() -> None:
    before = time.time()
    identity = verifier.verify(mint_token(SECRET, "alice", roles=("operator",)))
    assert identity.user_id == "alice"
    assert identity.roles == frozenset({"operator"})
    assert before + 3600 - 2 <= identity.expires_at <= time.time() + 3600
    assert identity.can_control_agents() and not identity.is_admin


def test_mint_defaults_to_an_operator_for_one_hour() -> None:
    claims = jwt.decode(
        mint_token(SECRET, "bob", now=1000.0),
        SECRET,
        algorithms=["HS256"],
        options={"verify_exp": False},
    )
    assert claims == {"sub": "bob", "roles": ["operator"], "iat": 1000, "exp": 4600}


def test_mint_extra_claims() -> None:
    token = mint_token(SECRET, "bob", extra={"aud": "dash"})
    claims = jwt.decode(token, SECRET, algorithms=["HS256"], audience="dash")
    assert claims["aud"] == "dash"


def test_wrong_secret_is_auth_failed() -> None:
    err = refused(mint_token("another-secret-" + "0123456789abcdef" * 4, "alice"))
    assert err.code == ErrorCode.AUTH_FAILED
    assert int(err.code) == 1001


def test_tampered_token_is_auth_failed() -> None:
    head, _, sig = mint_token(SECRET, "alice").split(".")
    forged = raw({"sub": "mallory", "exp": int(time.time()) + 60}).split(".")[1]
    assert refused(f"{head}.{forged}.{sig}").code == ErrorCode.AUTH_FAILED


@pytest.mark.parametrize("token", ["", "not-a-jwt", "a.b.c", "x" * 100])
def test_garbage_is_auth_failed(token: str) -> None:
    assert refused(token).code == ErrorCode.AUTH_FAILED


def test_expired_is_token_expired() -> None:
    token = mint_token(SECRET, "alice", ttl_s=60, now=time.time() - 3600)
    err = refused(token)
    assert err.code == ErrorCode.TOKEN_EXPIRED
    assert int(err.code) == 1002


def test_leeway_accepts_a_just_expired_token() -> None:
    token = mint_token(SECRET, "alice", ttl_s=60, now=time.time() - 70)
    assert refused(token).code == ErrorCode.TOKEN_EXPIRED
    assert TokenVerifier(SECRET, leeway_s=30).verify(token).user_id == "alice"


def test_missing_exp_is_refused() -> None:
    err = refused(raw({"sub": "alice", "iat": int(time.time())}))
    assert err.code == ErrorCode.AUTH_FAILED
    assert "exp" in err.message


def test_missing_sub_is_refused() -> None:
    now = int(time.time())
    err = refused(raw({"iat": now, "exp": now + 60}))
    assert err.code == ErrorCode.AUTH_FAILED
    assert "sub" in err.message


@pytest.mark.parametrize("sub", ["", "x" * 129, 42])
def test_bad_sub_is_refused(sub: object) -> None:
    now = int(time.time())
    assert refused(raw({"sub": sub, "iat": now, "exp": now + 60})).code == ErrorCode.AUTH_FAILED


def test_alg_none_is_refused() -> None:
    now = int(time.time())
    token = jwt.encode({"sub": "alice", "iat": now, "exp": now + 60}, None, algorithm="none")
    assert refused(token).code == ErrorCode.AUTH_FAILED
    # Also when the header says "none" but the token still carries a signature.
    head = token.split(".")[0]
    _, body, sig = mint_token(SECRET, "alice").split(".")
    assert refused(f"{head}.{body}.{sig}").code == ErrorCode.AUTH_FAILED


def test_other_algorithm_than_configured_is_refused() -> None:
    now = int(time.time())
    token = raw({"sub": "alice", "iat": now, "exp": now + 60}, algorithm="HS512")
    assert refused(token).code == ErrorCode.AUTH_FAILED
    assert TokenVerifier(SECRET, algorithms=("HS512",)).verify(token).user_id == "alice"


def test_lifetime_over_one_hour_is_refused() -> None:
    err = refused(mint_token(SECRET, "alice", ttl_s=3601))
    assert err.code == ErrorCode.AUTH_FAILED
    assert "lifetime" in err.message
    assert verifier.verify(mint_token(SECRET, "alice", ttl_s=3600)).user_id == "alice"


def test_lifetime_without_iat_is_measured_from_now() -> None:
    now = int(time.time())
    assert verifier.verify(raw({"sub": "alice", "exp": now + 600})).user_id == "alice"
    err = refused(raw({"sub": "alice", "exp": now + 30 * 24 * 3600}))
    assert err.code == ErrorCode.AUTH_FAILED
    assert "lifetime" in err.message


def test_iat_in_the_future_is_refused() -> None:
    now = int(time.time())
    token = raw({"sub": "alice", "iat": now + 600, "exp": now + 1200})
    assert refused(token).code == ErrorCode.AUTH_FAILED


def test_roles_default_to_viewer() -> None:
    now = int(time.time())
    identity = verifier.verify(raw({"sub": "alice", "iat": now, "exp": now + 60}))
    assert identity.roles == frozenset({"viewer"})
    assert not identity.can_control_agents() and not identity.is_admin


def test_roles_as_one_string_and_unknown_roles_dropped() -> None:
    now = int(time.time())
    one = verifier.verify(raw({"sub": "a", "iat": now, "exp": now + 60, "roles": "admin"}))
    assert one.roles == frozenset({"admin"}) and one.is_admin and one.can_control_agents()
    mixed = verifier.verify(
        raw({"sub": "a", "iat": now, "exp": now + 60, "roles": ["operator", "root"]})
    )
    assert mixed.roles == frozenset({"operator"})
    assert set(ROLES) == {"viewer", "operator", "admin"}


@pytest.mark.parametrize("roles", [42, [1, 2], {"admin": True}])
def test_bad_roles_claim_is_refused(roles: object) -> None:
    now = int(time.time())
    token = raw({"sub": "a", "iat": now, "exp": now + 60, "roles": roles})
    assert refused(token).code == ErrorCode.AUTH_FAILED


def test_issuer_and_audience_when_configured() -> None:
    strict = TokenVerifier(SECRET, issuer="teamdash", audience="dashboard")
    good = mint_token(SECRET, "a", extra={"iss": "teamdash", "aud": "dashboard"})
    assert strict.verify(good).user_id == "a"
    assert refused(mint_token(SECRET, "a"), strict).code == ErrorCode.AUTH_FAILED
    wrong = mint_token(SECRET, "a", extra={"iss": "teamdash", "aud": "other"})
    assert refused(wrong, strict).code == ErrorCode.AUTH_FAILED


def test_identity_is_frozen() -> None:
    identity = Identity("a", frozenset({"viewer"}), 0.0)
    with pytest.raises(AttributeError):
        identity.user_id = "b"  # type: ignore[misc]


def test_dev_secret_is_created_once_and_private(tmp_path: Path) -> None:
    state = tmp_path / "state"
    first = load_or_create_dev_secret(state)
    assert len(first) >= 32
    assert load_or_create_dev_secret(state) == first
    path = state / "jwt-secret"
    assert path.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in state.iterdir()] == ["jwt-secret"]  # no temp files left


@pytest.mark.parametrize("roles", [["root"], "superuser", [], ["Admin", "guest"]])
def test_a_token_with_no_known_role_is_a_viewer(roles: object) -> None:
    """docs/protocol.md: ``viewer`` is the default; unknown roles must not leave the user
    with no role at all (``roles: []`` in connection:status)."""
    now = int(time.time())
    identity = verifier.verify(raw({"sub": "a", "iat": now, "exp": now + 60, "roles": roles}))
    assert identity.roles == frozenset({"viewer"})
    assert not identity.can_control_agents() and not identity.is_admin


# -- the HMAC shortcut (TokenVerifier._plain_hmac_claims) ----------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _part(part: object) -> str:
    """A token segment: a str as it is, bytes as JSON text, anything else as JSON."""
    if isinstance(part, str):
        return part
    return _b64(part if isinstance(part, bytes) else json.dumps(part).encode())


def _signed(header: object, claims: object, key: str = SECRET, digest: str = "sha256") -> str:
    """A token with exactly this header and these claims, signed."""
    head, body = _part(header), _part(claims)
    signature = hmac.digest(key.encode(), f"{head}.{body}".encode(), digest)
    return f"{head}.{body}.{_b64(signature)}"


def _pyjwt(v: TokenVerifier, token: str) -> dict[str, object] | str:
    """What PyJWT alone says of ``token`` with ``v``'s options: the claims, or the error."""
    require = ["exp", "sub"] + (["iss"] if v.issuer else []) + (["aud"] if v.audience else [])
    try:
        claims: dict[str, object] = jwt.decode(
            token,
            v.key,  # type: ignore[arg-type]
            algorithms=list(v.algorithms),
            options={"require": require, "verify_aud": v.audience is not None},
            issuer=v.issuer,
            audience=v.audience,
            leeway=v.leeway_s,
        )
    except jwt.InvalidTokenError as e:
        return f"{type(e).__name__}: {e}"
    return claims


def _standard_alphabet(claims: dict[str, object]) -> str:
    """``claims`` as a segment in base64's standard alphabet (``+`` and ``/``)."""
    segment = base64.b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    assert "+" in segment or "/" in segment
    return segment


HS256 = {"alg": "HS256", "typ": "JWT"}
STRICT = TokenVerifier(SECRET, issuer="teamdash", audience="dashboard", leeway_s=5)


def _shapes(now: int) -> list[tuple[TokenVerifier, str, bool]]:
    """(verifier, token, the shortcut takes it): odd shapes on both sides of every check,
    made at ``now`` (when the test runs, not when it is collected)."""
    good = {"sub": "alice", "iat": now, "exp": now + 60}
    strict_good = {**good, "iss": "teamdash", "aud": "dashboard"}
    return [
        (verifier, mint_token(SECRET, "alice"), True),
        (verifier, _signed(HS256, good), True),
        (verifier, _signed({"alg": "HS256"}, good), True),
        (
            verifier,
            _signed({"typ": "JWT", "alg": "HS256"}, {**good, "jti": "j1", "nbf": now}),
            True,
        ),
        (verifier, _signed(HS256, {"sub": "alice", "exp": now + 60}), True),
        # header: another algorithm, none, missing, not a string, extra fields, not an object
        (verifier, _signed({"alg": "HS512"}, good, digest="sha512"), False),
        (verifier, _signed({"alg": "none"}, good), False),
        (verifier, _signed({"typ": "JWT"}, good), False),
        (verifier, _signed({"alg": ["HS256"]}, good), False),
        (verifier, _signed({"alg": "HS256", "kid": "k1"}, good), False),
        (verifier, _signed({"alg": "HS256", "kid": 7}, good), False),
        (verifier, _signed({"alg": "HS256", "crit": ["b64"], "b64": True}, good), False),
        (verifier, _signed({"alg": "HS256", "crit": ["exp"]}, good), False),
        (verifier, _signed({"alg": "HS256", "b64": False}, good), False),
        (verifier, _signed(["HS256"], good), False),
        (verifier, _signed(b"{'alg': 'HS256'}", good), False),
        # signature: another key, cut short, tampered body
        (verifier, _signed(HS256, good, key=SECRET + "x"), False),
        (verifier, _signed(HS256, good)[:-2], False),
        (
            verifier,
            ".".join(
                mint_token(SECRET, "mallory").split(".")[:2] + [_signed(HS256, good).split(".")[2]]
            ),
            False,
        ),
        # base64url: padding, the standard alphabet, a stray character, non-canonical bits
        (verifier, _signed(_b64(json.dumps(HS256).encode()) + "=", good), False),
        (verifier, _signed(HS256, _b64(json.dumps(good).encode()) + "=="), False),
        (verifier, _signed(HS256, _standard_alphabet({**good, "sub": "~~~"})), False),
        (verifier, _signed(HS256, good) + ".", False),
        (verifier, _signed(HS256, good).replace(".", "..", 1), False),
        (verifier, "é" + _signed(HS256, good), False),
        # claims: exp, iat, nbf as other types, in the past or the future, at the leeway's edge
        (verifier, _signed(HS256, {**good, "exp": now - 1}), False),
        (verifier, _signed(HS256, {**good, "exp": float(now + 60)}), False),
        (verifier, _signed(HS256, {**good, "exp": str(now + 60)}), False),
        (verifier, _signed(HS256, {**good, "exp": True}), False),
        (verifier, _signed(HS256, {**good, "exp": None}), False),
        (verifier, _signed(HS256, {**good, "exp": 2**70}), False),
        (verifier, _signed(HS256, {**good, "iat": now + 600}), False),
        (verifier, _signed(HS256, {**good, "iat": "now"}), False),
        (verifier, _signed(HS256, {**good, "iat": float(now)}), False),
        (verifier, _signed(HS256, {**good, "nbf": now + 600}), False),
        (verifier, _signed(HS256, {**good, "nbf": None}), False),
        (verifier, _signed(HS256, {**good, "sub": 42}), False),
        (verifier, _signed(HS256, {**good, "sub": None}), False),
        (verifier, _signed(HS256, {"iat": now, "exp": now + 60}), False),
        (verifier, _signed(HS256, {**good, "jti": 7}), False),
        (verifier, _signed(HS256, {**good, "exp": "NaN"}), False),
        (verifier, _signed(HS256, b'{"sub": "alice", "exp": NaN}'), False),
        (verifier, _signed(HS256, b'{"sub": "alice", "exp": Infinity}'), False),
        (verifier, _signed(HS256, json.dumps(good).encode("utf-16")), False),
        (verifier, _signed(HS256, ["alice"]), False),
        (verifier, _signed(HS256, b'{"sub": "alice", "exp": 1, "exp": %d}' % (now + 60)), True),
        (verifier, _signed(HS256, b'{"sub": "alice", "exp": %d, "exp": 1}' % (now + 60)), False),
        (STRICT, _signed(HS256, {**strict_good, "exp": now - 2}), True),
        (STRICT, _signed(HS256, {**strict_good, "exp": now - 10}), False),
        (STRICT, _signed(HS256, {**strict_good, "iat": now + 2}), True),
        (STRICT, _signed(HS256, {**strict_good, "nbf": now + 10}), False),
        # issuer and audience, when configured (and ignored when not)
        (verifier, _signed(HS256, {**good, "iss": 7, "aud": ["x", 1]}), True),
        (STRICT, _signed(HS256, {**good, "iss": "teamdash", "aud": "dashboard"}), True),
        (STRICT, _signed(HS256, {**good, "iss": "teamdash", "aud": ["x", "dashboard"]}), True),
        (STRICT, _signed(HS256, {**good, "iss": "teamdash", "aud": ["x"]}), False),
        (STRICT, _signed(HS256, {**good, "iss": "teamdash", "aud": ["dashboard", 1]}), False),
        (STRICT, _signed(HS256, {**good, "iss": "teamdash", "aud": "other"}), False),
        (STRICT, _signed(HS256, {**good, "iss": "teamdash", "aud": ""}), False),
        (STRICT, _signed(HS256, {**good, "iss": "teamdash", "aud": {"dashboard": 1}}), False),
        (STRICT, _signed(HS256, {**good, "iss": "teamdash"}), False),
        (STRICT, _signed(HS256, {**good, "iss": "other", "aud": "dashboard"}), False),
        (STRICT, _signed(HS256, {**good, "iss": ["teamdash"], "aud": "dashboard"}), False),
        (STRICT, _signed(HS256, {**good, "aud": "dashboard"}), False),
    ]


@pytest.mark.parametrize("shape", range(len(_shapes(0))))
def test_the_hmac_shortcut_accepts_only_what_pyjwt_accepts(shape: int) -> None:
    """Where the shortcut gives claims, PyJWT gives the same; everything else is PyJWT's."""
    v, token, taken = _shapes(int(time.time()))[shape]
    claims = v._plain_hmac_claims(token)
    assert (claims is not None) == taken, _pyjwt(v, token)
    if claims is not None:
        assert claims == _pyjwt(v, token)


def test_the_hmac_shortcut_leaves_odd_keys_to_pyjwt() -> None:
    """A secret shorter than the hash (PyJWT warns) or one PyJWT refuses as a key: PyJWT
    decides every token, and says what it says."""
    short = "s" * 16
    with pytest.warns(jwt.InsecureKeyLengthWarning):
        token = mint_token(short, "a")
    assert TokenVerifier(short)._plain_hmac_claims(token) is None
    with pytest.warns(jwt.InsecureKeyLengthWarning):
        assert TokenVerifier(short).verify(token).user_id == "a"
    jwk = '{"kty": "oct", "k": "' + "A" * 43 + '"}'
    with pytest.raises(jwt.InvalidKeyError):
        TokenVerifier(jwk).verify(mint_token(SECRET, "a"))
