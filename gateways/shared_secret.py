"""The check for webhooks of gateways that sign nothing (Evolution, Mega): the request must carry the shared token
(WEBHOOK_TOKEN, or the one generated at the first start) as `Authorization: Bearer …` or `?token=…`, or an HS256
JWT signed with WEBHOOK_JWT_SECRET, unless WEBHOOK_AUTH=off opened the webhook.

components.py builds one `SharedSecretVerifier` from the secret computed at start (webhook_token.py) and gives it to
those adapters, whose `verify` calls it. Comparisons take constant time; nothing here logs a credential.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field

import jwt

from errors import AuthError
from gateways.base import InboundRequest

JWT_LEEWAY_SECONDS = 30


@dataclass(frozen=True, slots=True, kw_only=True)
class SharedSecretVerifier:
    """What an unsigned webhook request is checked against. With neither a token nor a JWT secret every request is
    refused, unless `is_open` (WEBHOOK_AUTH=off) says the webhook takes anyone's posts."""

    token: str = field(default="", repr=False)
    jwt_secret: str = field(default="", repr=False)
    is_open: bool = False

    def verify(self, request: InboundRequest) -> None:
        """Raise AuthError unless the request carries the token or a valid JWT (or the webhook is open)."""
        if not self.is_authorized(request.header("Authorization"), request.query.get("token", "")):
            raise AuthError("missing or invalid credentials")

    def is_authorized(self, authorization: str, query_token: str) -> bool:
        """True when the webhook is open, or `authorization` ("Bearer …") or `query_token` holds the token, or the
        bearer is a JWT signed with the JWT secret that has not expired (an `exp` is required)."""
        if self.is_open:
            return True
        bearer = authorization[7:].strip() if authorization[:7].lower() == "bearer " else ""
        if self.token:
            for candidate in (bearer, query_token):
                if candidate and hmac.compare_digest(candidate.encode(), self.token.encode()):
                    return True
        if self.jwt_secret and bearer:
            try:
                jwt.decode(
                    bearer,
                    self.jwt_secret,
                    algorithms=["HS256"],
                    leeway=JWT_LEEWAY_SECONDS,
                    options={"require": ["exp"]},  # Evolution's tokens expire after 10 minutes; refuse eternal ones
                )
                return True
            except jwt.PyJWTError:
                return False
        return False
