"""Gateway adapters: one module per WhatsApp gateway, each a `gateways.base.Gateway` with every method:

    name, max_text_chars                       the chats' `gateway`; the longest text one message carries
    verify(request)     -> None                or AuthError / SignatureError (shared token, or the signature)
    handshake(query)    -> str | None          Meta's GET subscription check; the others answer None
    parse(request, *, accept_groups, max_text_chars) -> [IncomingMessage | IgnoredEvent]   or PayloadError
    answer(summary)     -> WebhookAnswer | None   the HTTP answer the gateway expects (TwiML for Twilio)
    send_text(chat, text, *, typing_ms=0, reply_to="") -> gateway message id        or SendError
    mark_read(chat, message_id) -> None        best effort read receipt
    fetch_media(chat, media, *, max_bytes) -> (bytes, mime)    or MediaError (the worker, never the webhook)
    find_sent(chat, text, *, since) -> bool | None   did this part go out? (None: cannot tell)

Evolution and Mega sign nothing: they check the shared token with the `SharedSecretVerifier` they are built with
(shared_secret.py). The HTTP helpers the adapters share are in http.py. The pipeline (webhook routes, buffer, worker)
knows a chat's gateway only through `ChatRef.gateway` and this interface; adding a gateway means adding one module
here and one line in `build_gateways`.
"""

from __future__ import annotations

from config import Settings
from gateways.base import Businesses, Gateway
from gateways.evolution import EvolutionGateway
from gateways.mega import MegaGateway
from gateways.meta import MetaGateway
from gateways.shared_secret import SharedSecretVerifier
from gateways.twilio import TwilioGateway


def build_gateways(
    settings: Settings, *, shared_secret: SharedSecretVerifier, businesses: Businesses | None = None
) -> dict[str, Gateway]:
    """Gateway name -> adapter, for every gateway whose required variables are set (Evolution always).
    `shared_secret` guards the webhooks of the gateways that sign nothing (Evolution, Mega); `businesses` (TENANTS_FILE)
    gives Meta's and Twilio's webhooks the secrets of the business each number belongs to."""
    common = {
        "timeout_seconds": settings.send_timeout_seconds,
        "max_retries": settings.send_max_retries,
        "media_attempts": settings.media_fetch_attempts,
        "media_timeout_seconds": settings.media_fetch_timeout_seconds,
    }
    gateways: dict[str, Gateway] = {"evolution": EvolutionGateway(settings, shared_secret=shared_secret)}
    if settings.meta_enabled:
        gateways["meta"] = MetaGateway(
            app_secret=settings.meta_app_secret,
            verify_token=settings.meta_verify_token,
            access_token=settings.meta_access_token,
            phone_number_id=settings.meta_phone_number_id,
            graph_url=settings.meta_graph_url,
            api_version=settings.meta_api_version,
            mark_as_read=settings.meta_mark_as_read,
            businesses=businesses,
            **common,
        )
    if settings.mega_enabled:
        gateways["mega"] = MegaGateway(
            shared_secret=shared_secret,
            base_url=settings.mega_api_base_url,
            instance_id=settings.mega_instance_id,
            token=settings.mega_api_token,
            **common,
        )
    if settings.twilio_enabled:
        gateways["twilio"] = TwilioGateway(
            account_sid=settings.twilio_account_sid,
            auth_token=settings.twilio_auth_token,
            # Several businesses: each reply goes out from the number its customer wrote to (a business's number,
            # perhaps in its own sub-account), not from the environment's.
            whatsapp_from="" if settings.tenants_file else settings.twilio_whatsapp_from,
            public_url=settings.twilio_public_url,
            api_url=settings.twilio_api_url,
            businesses=businesses,
            **common,
        )
    return gateways
