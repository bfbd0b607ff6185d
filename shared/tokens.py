"""JWT minting (dev tokens) and verification (the gateway's auth).

A token is accepted when its signature verifies with the configured algorithm and key,
``exp`` is present and in the future, ``exp`` is at most ``max_lifetime_s`` after ``iat``
(after now when ``iat`` is absent), and ``sub`` names the user. ``roles`` (a list, or one
string) gives the user's roles; a token without it gets ``viewer`` (read-only).
"""

from __future__ import annotations

import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt

from shared.errors import ErrorCode, TeamdashError

ROLES = ("viewer", "operator", "admin")


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
    key: str
    algorithms: tuple[str, ...] = ("HS256",)
    max_lifetime_s: int = 3600
    issuer: str | None = None
    audience: str | None = None
    leeway_s: float = 0.0

    def verify(self, token: str) -> Identity:
        """The identity in ``token``, or TeamdashError AUTH_FAILED / TOKEN_EXPIRED."""
        options: dict[str, Any] = {"require": ["exp", "sub"], "verify_aud": self.audience is not None}
        try:
            claims = jwt.decode(
                token,
                self.key,
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
        return Identity(sub, frozenset(r for r in raw_roles if r in ROLES), exp)


def mint_token(
    secret: str,
    user_id: str,
    *,
    roles: tuple[str, ...] = ("operator",),
    ttl_s: int = 3600,
    algorithm: str = "HS256",
    now: float | None = None,
    extra: dict[str, Any] | None = None,
) -> str:
    """A signed token for ``user_id`` valid ``ttl_s`` seconds (dev and tests)."""
    issued = int(time.time() if now is None else now)
    claims: dict[str, Any] = {"sub": user_id, "roles": list(roles), "iat": issued, "exp": issued + ttl_s}
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
