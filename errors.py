"""The service's own exceptions; third-party errors are translated into these where the call is made.

AssistantError
├── ConfigError       config: a variable is set but invalid
├── PayloadError      parser: the body cannot be read at all
├── AuthError         gateways: a webhook without the shared token (WEBHOOK_TOKEN / JWT)
│   └── SignatureError  gateways: a signed gateway's webhook with a missing or wrong signature (Meta, Twilio)
├── AIServiceError    ai_service: Gemini failed, empty or blocked (.transient)
├── SendError         gateways: gateway refused or unreachable (.status_code, .transient)
└── MediaError        gateways: a media item could not be fetched or is not acceptable (.problem)
"""

from __future__ import annotations


class AssistantError(Exception):
    """Base class of every error this service raises on purpose."""


class ConfigError(AssistantError):
    """A configuration variable is set but invalid."""


class PayloadError(AssistantError):
    """A webhook body that cannot be read at all (not JSON, wrong top-level type)."""


class AuthError(AssistantError):
    """A webhook request without valid credentials (counted as `auth_failures`)."""


class SignatureError(AuthError):
    """A webhook request whose gateway signs its requests, without a valid signature (counted as
    `signature_failures`)."""


class AIServiceError(AssistantError):
    """Gemini did not produce a usable reply (`status_code`: Gemini's HTTP status, when it answered one)."""

    def __init__(self, message: str, *, transient: bool = True, status_code: int | None = None) -> None:
        super().__init__(message)
        self.transient = transient
        self.status_code = status_code


class SendError(AssistantError):
    """The gateway did not accept a message. `rate_limit`: it said the number ("number") or this customer's
    conversation ("customer") gets messages too fast; the message is sent again once that has slowed down
    (`retry_after` seconds, when the gateway said how long)."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        transient: bool = True,
        rate_limit: str = "",
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.transient = transient
        self.rate_limit = rate_limit
        self.retry_after = retry_after


class MediaError(AssistantError):
    """A media item the worker cannot give to Gemini. `problem` says why, in one word the reply can use:
    "too_large", "unsupported" (type not allowed) or "unreadable" (fetch failed, expired, bad data)."""

    def __init__(self, message: str, *, problem: str = "unreadable") -> None:
        super().__init__(message)
        self.problem = problem
