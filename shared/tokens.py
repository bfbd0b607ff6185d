"""JWT minting (dev tokens) and verification (the gateway's auth).

A token is accepted when its signature verifies with the configured algorithm and key,
``exp`` is present and in the future, ``exp`` is at most ``max_lifetime_s`` after ``iat``
(after now when ``iat`` is absent; an ``iat`` in the future is refused), ``iss`` / ``aud``
match when the verifier is configured with them, and ``sub`` names the user. ``roles`` (a
list, or one string) gives the user's roles; unknown ones are dropped, and a token without
the claim, or with no known role in it, gets ``viewer`` (read-only).

Algorithms: HS256 with a shared secret, or RS256 / ES256 with a public key (PEM). A verifier
accepts exactly the algorithms it is configured with, never ``none``, and never mixes an
HMAC algorithm with a public key: the classic *algorithm confusion* (an HS256 token signed
with the RSA public key used as the HMAC secret) is refused twice over, by the algorithm
allow-list and because the key is a loaded key object, not text PyJWT could use as a secret.

PyJWT decides every token, with one shortcut. For an HMAC key, ``verify`` first tries
:meth:`TokenVerifier._plain_hmac_claims`: the common token (header ``alg``/``typ`` only,
canonical base64url, integer ``exp``/``iat``/``nbf``, string ``sub``) checked with
``hmac.compare_digest`` and orjson in ~10 µs, where PyJWT takes ~90 µs (it re-checks the
secret on every call and scans each segment one byte at a time in Python: a third of the
gateway's CPU per connect+auth in a burst of 1,000). The shortcut only ever *accepts*, and
only what PyJWT accepts (``tests/shared/test_tokens.py`` compares the two on every odd
shape); any doubt at all, and every refusal, goes to PyJWT, so errors are PyJWT's own.
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
import os
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jwt
import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import HMACAlgorithm

from shared.errors import ErrorCode, TeamdashError
from shared.settings import ConfigError, Env

if TYPE_CHECKING:
    from jwt.types import Options

ROLES = ("viewer", "operator", "admin")

#: Algorithms a deployment can choose (``TEAMDASH_JWT_ALGORITHM``).
SYMMETRIC_ALGORITHMS = ("HS256",)
ASYMMETRIC_ALGORITHMS = ("RS256", "ES256")
ALGORITHMS = SYMMETRIC_ALGORITHMS + ASYMMETRIC_ALGORITHMS

#: Smallest RSA modulus accepted for RS256 keys (bits).
MIN_RSA_BITS = 2048

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey

#: The HMAC algorithms the shortcut checks itself, with their hash (PyJWT's, by name).
_HMAC_HASHES: dict[str, Callable[[], Any]] = {
    "HS256": hashlib.sha256,
    "HS384": hashlib.sha384,
    "HS512": hashlib.sha512,
}
#: A base64url segment as the shortcut takes it: the alphabet, no padding.
_SEGMENT = re.compile(rb"[A-Za-z0-9_-]*")
_TO_STANDARD = bytes.maketrans(b"-_", b"+/")
_TO_URLSAFE = bytes.maketrans(b"+/", b"-_")
_PADDING = (b"", b"=", b"==", b"===")
#: The only header the shortcut reads (``kid``, ``crit``, ``b64``… go to PyJWT).
_PLAIN_HEADER = frozenset({"alg", "typ"})
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


class KeyConfigError(ValueError):
    """A key that cannot be used for the configured algorithm (bad PEM, wrong type, too weak)."""


#: The curve each ECDSA algorithm signs with.
_CURVES: dict[str, type[ec.EllipticCurve]] = {
    "ES256": ec.SECP256R1,
    "ES384": ec.SECP384R1,
    "ES512": ec.SECP521R1,
}


def _check_key_type(key: object, algorithm: str, what: str) -> None:
    if algorithm[:2] in ("RS", "PS"):
        if not isinstance(key, (rsa.RSAPublicKey, rsa.RSAPrivateKey)):
            raise KeyConfigError(f"{algorithm} needs an RSA {what}, not {type(key).__name__}")
        if key.key_size < MIN_RSA_BITS:
            raise KeyConfigError(
                f"the RSA {what} has {key.key_size} bits; at least {MIN_RSA_BITS} are needed"
            )
    elif algorithm in _CURVES:
        if not isinstance(key, (ec.EllipticCurvePublicKey, ec.EllipticCurvePrivateKey)):
            raise KeyConfigError(f"{algorithm} needs an EC {what}, not {type(key).__name__}")
        curve = _CURVES[algorithm]
        if not isinstance(key.curve, curve):
            raise KeyConfigError(
                f"{algorithm} needs an EC {what} on {curve.name}, not {key.curve.name}"
            )
    else:
        raise KeyConfigError(f"{algorithm} is not an asymmetric algorithm")


def load_public_key(pem: str | bytes, algorithm: str) -> PublicKey:
    """The public key in ``pem`` (SubjectPublicKeyInfo, or an X.509 certificate), checked
    against ``algorithm`` (RS256: RSA of at least 2048 bits; ES256: EC P-256)."""
    data = pem.encode() if isinstance(pem, str) else pem
    key: Any
    try:
        if b"-----BEGIN CERTIFICATE-----" in data:
            from cryptography import x509

            key = x509.load_pem_x509_certificate(data).public_key()
        else:
            key = serialization.load_pem_public_key(data)
    except ValueError as e:
        raise KeyConfigError(f"not a PEM public key or certificate: {e}") from e
    _check_key_type(key, algorithm, "public key")
    return key  # type: ignore[no-any-return]


def load_private_key(pem: str | bytes, algorithm: str | None = None) -> tuple[PrivateKey, str]:
    """The private key in ``pem`` (unencrypted PEM) and the algorithm it signs with: the
    given one (checked against the key), or RS256 for RSA and ES256 for EC P-256 keys."""
    data = pem.encode() if isinstance(pem, str) else pem
    try:
        key: Any = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as e:
        raise KeyConfigError(f"not an unencrypted PEM private key: {e}") from e
    if algorithm is None:
        if isinstance(key, rsa.RSAPrivateKey):
            algorithm = "RS256"
        elif isinstance(key, ec.EllipticCurvePrivateKey):
            algorithm = "ES256"
        else:
            raise KeyConfigError(
                f"unsupported private key type {type(key).__name__}: use RSA or EC P-256"
            )
    _check_key_type(key, algorithm, "private key")
    return key, algorithm


@dataclass(frozen=True, slots=True)
class Identity:
    user_id: str
    roles: frozenset[str]
    expires_at: float

    @property
    def is_admin(self) -> bool:
        return "admin" in self.roles

    def can_control_agents(self) -> bool:
        return bool(self.roles & {"operator", "admin"})


@dataclass(frozen=True, slots=True)
class TokenVerifier:
    """Verifies tokens with one kind of key. ``key`` is the HS* secret, or for RS*/ES* the
    public key (PEM text or a loaded key object); a mismatch is a :class:`KeyConfigError` here,
    at start-up, never a token that slips through later."""

    key: str | bytes | PublicKey
    algorithms: tuple[str, ...] = ("HS256",)
    max_lifetime_s: int = 3600
    issuer: str | None = None
    audience: str | None = None
    leeway_s: float = 0.0
    _key: Any = field(default=None, init=False, repr=False, compare=False)
    #: For the shortcut: the HMAC secret as bytes and the hash of each allowed algorithm.
    _hmac: tuple[bytes, dict[str, Callable[[], Any]]] | None = field(
        default=None, init=False, repr=False, compare=False
    )
    #: For the shortcut: header segments seen → the hash they name (None: PyJWT's). An
    #: issuer sends the same header every time; a few dozen at most are kept.
    _headers: dict[bytes, Callable[[], Any] | None] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        if not self.algorithms or "none" in (a.lower() for a in self.algorithms):
            raise KeyConfigError("a verifier needs at least one algorithm, and never 'none'")
        families = {a[:2] for a in self.algorithms}
        if len(families) != 1 or not families <= {"HS", "RS", "ES", "PS"}:
            raise KeyConfigError(
                f"algorithms {self.algorithms} mix key types (or are unknown): one family only"
            )
        family = families.pop()
        key: Any = self.key
        if family == "HS":
            if not isinstance(key, (str, bytes)):
                raise KeyConfigError("HS* algorithms need a shared secret, not a public key")
            text = key.encode() if isinstance(key, str) else key
            if b"-----BEGIN" in text or text.startswith(b"ssh-"):
                raise KeyConfigError("a PEM key is not an HMAC secret (algorithm confusion)")
            object.__setattr__(self, "_hmac", _hmac_shortcut(text, self.algorithms))
        elif isinstance(key, (str, bytes)):
            key = load_public_key(key, self.algorithms[0])
        else:
            for algorithm in self.algorithms:
                _check_key_type(key, algorithm, "public key")
        object.__setattr__(self, "_key", key)

    def verify(self, token: str) -> Identity:
        """The identity in ``token``, or TeamdashError AUTH_FAILED / TOKEN_EXPIRED."""
        claims = self._plain_hmac_claims(token)
        try:
            if claims is None:
                require = ["exp", "sub"]
                if self.issuer is not None:
                    require.append("iss")
                if self.audience is not None:
                    require.append("aud")
                options: Options = {"require": require, "verify_aud": self.audience is not None}
                claims = jwt.decode(
                    token,
                    self._key,
                    algorithms=list(self.algorithms),
                    options=options,
                    issuer=self.issuer,
                    audience=self.audience,
                    leeway=self.leeway_s,
                )
        except jwt.ExpiredSignatureError as e:
            raise TeamdashError(ErrorCode.TOKEN_EXPIRED, "token expired") from e
        except jwt.InvalidTokenError as e:
            raise TeamdashError(ErrorCode.AUTH_FAILED, f"invalid token: {e}") from e
        exp = float(claims["exp"])
        iat = claims.get("iat")
        if isinstance(iat, (int, float)) and exp - float(iat) > self.max_lifetime_s:
            raise TeamdashError(
                ErrorCode.AUTH_FAILED,
                f"token lifetime exceeds {self.max_lifetime_s}s (exp - iat)",
            )
        # Without ``iat`` the lifetime is measured from now, so leaving ``iat`` out cannot
        # buy a token that lives longer than the limit.
        if iat is None and exp - time.time() > self.max_lifetime_s + self.leeway_s:
            raise TeamdashError(
                ErrorCode.AUTH_FAILED,
                f"token lifetime exceeds {self.max_lifetime_s}s (exp - now, no iat)",
            )
        sub = claims["sub"]
        if not isinstance(sub, str) or not sub or len(sub) > 128:
            raise TeamdashError(ErrorCode.AUTH_FAILED, "invalid token: bad 'sub' claim")
        raw_roles = claims.get("roles", ["viewer"])
        if isinstance(raw_roles, str):
            raw_roles = [raw_roles]
        if not isinstance(raw_roles, list) or not all(isinstance(r, str) for r in raw_roles):
            raise TeamdashError(ErrorCode.AUTH_FAILED, "invalid token: bad 'roles' claim")
        # Unknown roles are dropped; a token left with none (``["root"]``, ``[]``) is a
        # viewer, like one without the claim, not a user with no role at all.
        known = frozenset(r for r in raw_roles if r in ROLES)
        return Identity(sub, known or frozenset({"viewer"}), exp)

    def _plain_hmac_claims(self, token: str) -> dict[str, Any] | None:
        """The claims of ``token`` when it is a plain HMAC token that PyJWT would accept
        with this verifier's options (signature, ``exp``, ``iat``, ``nbf``, ``iss``, ``aud``,
        ``sub``, ``jti``, as in PyJWT's ``_validate_claims``); None otherwise (PyJWT then
        decides). Never refuses: a None is "ask PyJWT", not "invalid"."""
        if self._hmac is None or not isinstance(token, str) or not token.isascii():
            return None
        key = self._hmac[0]
        raw = token.encode()
        segments = raw.split(b".")
        if len(segments) != 3:
            return None
        digest = self._header_hash(segments[0])
        payload = _segment(segments[1])
        if digest is None or payload is None:
            return None
        try:
            claims = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return None
        if type(claims) is not dict:
            return None
        # Compared as text: the signature segment must be the canonical encoding of the
        # right MAC (any other spelling is PyJWT's to judge).
        signed = raw[: len(segments[0]) + 1 + len(segments[1])]
        mac = binascii.b2a_base64(hmac.digest(key, signed, digest), newline=False)
        if not hmac.compare_digest(mac.translate(_TO_URLSAFE).rstrip(b"="), segments[2]):
            return None
        now, leeway = time.time(), self.leeway_s
        exp = claims.get("exp")
        if type(exp) is not int or exp <= now - leeway or not isinstance(claims.get("sub"), str):
            return None
        for name in ("iat", "nbf"):
            if name in claims and (type(claims[name]) is not int or claims[name] > now + leeway):
                return None
        if "jti" in claims and not isinstance(claims["jti"], str):
            return None
        if self.issuer is not None and claims.get("iss") != self.issuer:
            return None
        if self.audience is not None:
            aud = claims.get("aud")
            if type(aud) is list and all(isinstance(a, str) for a in aud):
                if self.audience not in aud:
                    return None
            elif not aud or aud != self.audience:
                return None
        return claims

    def _header_hash(self, segment: bytes) -> Callable[[], Any] | None:
        """The hash of a plain header (``alg``/``typ`` alone, an allowed HMAC algorithm),
        remembered per segment; None for any other header."""
        headers = self._headers
        if segment in headers:
            return headers[segment]
        digest = None
        decoded = _segment(segment)
        try:
            head = orjson.loads(decoded) if decoded is not None else None
        except orjson.JSONDecodeError:
            head = None
        if type(head) is dict and head.keys() <= _PLAIN_HEADER:
            alg = head.get("alg")
            assert self._hmac is not None
            digest = self._hmac[1].get(alg) if type(alg) is str else None
        if len(headers) >= 32:
            headers.clear()  # a client making up headers: start over
        headers[segment] = digest
        return digest


def _hmac_shortcut(
    secret: bytes, algorithms: tuple[str, ...]
) -> tuple[bytes, dict[str, Callable[[], Any]]] | None:
    """What :meth:`TokenVerifier._plain_hmac_claims` needs, or None where PyJWT must decide
    alone: an algorithm it does not know, a secret PyJWT refuses (it raises on every token)
    or warns about (shorter than the hash)."""
    if not all(a in _HMAC_HASHES for a in algorithms):
        return None
    try:
        HMACAlgorithm(HMACAlgorithm.SHA256).prepare_key(secret)
    except jwt.InvalidKeyError:
        return None
    hashes = {a: _HMAC_HASHES[a] for a in algorithms}
    if any(len(secret) < h().digest_size for h in hashes.values()):
        return None
    return secret, hashes


def _segment(segment: bytes) -> bytes | None:
    """The bytes of a base64url segment in the one form PyJWT takes without question: the
    alphabet only, no padding, canonical (re-encodes to itself)."""
    size = len(segment)
    if size % 4 == 1 or not _SEGMENT.fullmatch(segment):
        return None
    # binascii, not base64.urlsafe_b64*: the same decoding without four Python calls.
    decoded = binascii.a2b_base64(segment.translate(_TO_STANDARD) + _PADDING[-size % 4])
    if binascii.b2a_base64(decoded, newline=False).translate(_TO_URLSAFE).rstrip(b"=") != segment:
        return None
    return decoded


def mint_token(
    secret: str | bytes | PrivateKey,
    user_id: str,
    *,
    roles: tuple[str, ...] = ("operator",),
    ttl_s: int = 3600,
    algorithm: str = "HS256",
    now: float | None = None,
    issuer: str | None = None,
    audience: str | None = None,
    extra: dict[str, Any] | None = None,
) -> str:
    """A signed token for ``user_id`` valid ``ttl_s`` seconds (dev and tests). ``secret``
    is the HS256 secret, or for RS256/ES256 the private key (PEM or a loaded key)."""
    issued = int(time.time() if now is None else now)
    claims: dict[str, Any] = {
        "sub": user_id,
        "roles": list(roles),
        "iat": issued,
        "exp": issued + ttl_s,
    }
    if issuer is not None:
        claims["iss"] = issuer
    if audience is not None:
        claims["aud"] = audience
    if extra:
        claims.update(extra)
    return jwt.encode(claims, secret, algorithm=algorithm)


def load_or_create_dev_secret(state_dir: Path) -> str:
    """The dev JWT secret kept in ``state_dir/jwt-secret``, created on first use (0600)."""
    path = state_dir / "jwt-secret"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    state_dir.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(32)
    tmp = path.with_name(f".jwt-secret.{os.getpid()}.tmp")
    tmp.write_text(secret + "\n")
    tmp.chmod(0o600)
    try:
        # link() fails if another process created the file first; then theirs is used.
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
    return path.read_text().strip()


def jwt_secret(env: Env, state_dir: Path) -> str:
    """``TEAMDASH_JWT_SECRET``, or the content of the file ``TEAMDASH_JWT_SECRET_FILE`` names
    (a compose/Kubernetes secret), or the dev secret kept in the state folder (created once)."""
    secret = env.opt_str("TEAMDASH_JWT_SECRET")
    secret_file = env.opt_str("TEAMDASH_JWT_SECRET_FILE")
    if secret is not None and secret_file is not None:
        raise ConfigError("set TEAMDASH_JWT_SECRET or TEAMDASH_JWT_SECRET_FILE, not both")
    if secret_file is not None:
        try:
            secret = Path(secret_file).read_text().strip()
        except OSError as e:
            raise ConfigError(
                f"TEAMDASH_JWT_SECRET_FILE {secret_file!r} cannot be read: {e}"
            ) from e
        if len(secret) < 32:
            raise ConfigError(
                "the secret in TEAMDASH_JWT_SECRET_FILE must be at least 32 characters"
            )
        return secret
    if secret is not None:
        if len(secret) < 32:
            raise ConfigError("TEAMDASH_JWT_SECRET must be at least 32 characters")
        return secret
    return load_or_create_dev_secret(state_dir)
