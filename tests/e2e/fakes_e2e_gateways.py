"""Local fakes of the Meta Graph API, Twilio's Messages API and Mega API, plus signed webhook builders.

Each fake is a `tests.fakes.FakeServer`: it records every request and answers with the success body the real
API gives (Graph `messages[].id`, Twilio `201` + `sid`, Mega `error: false` + `key`), unless a test queued a
`Canned` answer. The builders produce webhook bodies in each gateway's own shape, with our own pt-BR values, and
sign them the way Meta (X-Hub-Signature-256) and Twilio (X-Twilio-Signature) do.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qs, urlsplit

import requests

from tests.fakes import Canned, FakeServer, Recorded

# ----- configuration the server under test gets -----------------------------------------------------------

META_APP_SECRET = "e2e-meta-app-secret-5d1c"
META_VERIFY_TOKEN = "e2e-meta-verify-token-a7"
META_ACCESS_TOKEN = "EAAGe2eMetaAccessToken93kd"
META_PHONE_NUMBER_ID = "109876543210987"
META_DISPLAY_NUMBER = "551130000000"
META_API_VERSION = "v23.0"

TWILIO_ACCOUNT_SID = "AC" + "e2e0" * 8
TWILIO_AUTH_TOKEN = "e2e-twilio-auth-token-0f9e"
TWILIO_WHATSAPP_FROM = "whatsapp:+14155238886"
TWILIO_PUBLIC_URL = "https://atendimento.lojaexemplo.com.br"
TWILIO_MESSAGES_PATH = f"/2010-04-01/Accounts/{TWILIO_ACCOUNT_SID}/Messages.json"

MEGA_INSTANCE = "megastart-E2E4K9"
MEGA_API_TOKEN = "e2e-mega-instance-token-31b"
MEGA_BUSINESS_JID = "5511930000000@s.whatsapp.net"

WEBHOOK_TOKEN = "e2e-shared-webhook-token-c3"

CUSTOMER_NUMBER = "5511987654321"  # same number as tests.e2e.conftest.CUSTOMER_JID
CUSTOMER_JID = f"{CUSTOMER_NUMBER}@s.whatsapp.net"
CUSTOMER_TWILIO = f"whatsapp:+{CUSTOMER_NUMBER}"
CUSTOMER_NAME = "Mariana Souza"


# ----- fakes ------------------------------------------------------------------------------------------------


class _GatewayFake(FakeServer):
    """FakeServer whose default answer may have its own status (Twilio answers 201 Created)."""

    default_status = 200

    def _answer(self, recorded: Recorded) -> tuple[int, Any, float]:
        with self._lock:
            self.requests.append(recorded)
            canned = self.script.popleft() if self.script else None
        if canned is None:
            answer = self.default_answer(recorded)
            if isinstance(answer, Canned):
                return answer.status, answer.body, self.delay
            return self.default_status, answer, self.delay
        body = canned.body if canned.body is not None else self.default_answer(recorded)
        return canned.status, body, canned.delay or self.delay


class FakeGraph(_GatewayFake):
    """Graph API `POST /{version}/{phone_number_id}/messages`: texts and read receipts; and media downloads:
    `GET /{version}/{media id}` answers the media's info with a URL on this fake, `GET /files/{id}` its bytes
    (set `media[id] = (bytes, mime)`)."""

    media: dict[str, tuple[bytes, str]]

    def default_answer(self, recorded: Recorded) -> Any:
        if recorded.method == "GET":
            return self._media_answer(recorded.path.split("?", 1)[0])
        body = recorded.json
        if body.get("status") == "read":
            return {"success": True}
        to = str(body.get("to", ""))
        return {
            "messaging_product": "whatsapp",
            "contacts": [{"input": to, "wa_id": to}],
            "messages": [{"id": f"wamid.HBgN{uuid.uuid4().hex.upper()}"}],
        }

    def _media_answer(self, path: str) -> Any:
        media = getattr(self, "media", {})
        media_id = path.rsplit("/", 1)[-1]
        if media_id not in media:
            return Canned(404, graph_error(100, "Unsupported get request."))
        data, mime = media[media_id]
        if path.startswith("/files/"):
            return data
        return {
            "messaging_product": "whatsapp",
            "url": f"{self.url}/files/{media_id}?ext=1763900000&hash=ATt-e2e",
            "mime_type": mime,
            "sha256": hashlib.sha256(data).hexdigest(),
            "file_size": len(data),
            "id": media_id,
        }

    def media_requests(self) -> list[Recorded]:
        return [r for r in self.received() if r.method == "GET"]

    def texts(self) -> list[Recorded]:
        return [r for r in self.received() if r.method == "POST" and r.json.get("type") == "text"]

    def read_receipts(self) -> list[Recorded]:
        return [r for r in self.received() if r.json.get("status") == "read"]


def graph_error(code: int, message: str, *, error_type: str = "OAuthException") -> dict[str, Any]:
    """A Graph API error body, e.g. 131047 (outside the 24 h window)."""
    return {
        "error": {
            "message": message,
            "type": error_type,
            "code": code,
            "error_data": {"messaging_product": "whatsapp", "details": message},
            "fbtrace_id": "AbCdE2eFbTrace",
        }
    }


class FakeTwilio(_GatewayFake):
    """Twilio `POST /2010-04-01/Accounts/{sid}/Messages.json` (form-encoded), answering 201 + a queued message."""

    default_status = 201
    media: dict[str, bytes]  # path -> bytes served on GET (MediaUrl0)

    def default_answer(self, recorded: Recorded) -> Any:
        if recorded.method == "GET" and recorded.path.split("?")[0].endswith("/Messages.json"):
            return self.messages_list(recorded)
        if recorded.method == "GET":
            data = getattr(self, "media", {}).get(recorded.path)
            return Canned(404, twilio_error(20404, "not found", 404)) if data is None else data
        form = form_of(recorded)
        sid = "SM" + uuid.uuid4().hex
        return {
            "account_sid": TWILIO_ACCOUNT_SID,
            "api_version": "2010-04-01",
            "body": form.get("Body", ""),
            "date_created": time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime()),
            "direction": "outbound-api",
            "error_code": None,
            "error_message": None,
            "from": form.get("From", ""),
            "num_media": "0",
            "num_segments": "1",
            "price": None,
            "sid": sid,
            "status": "queued",
            "to": form.get("To", ""),
            "uri": f"{TWILIO_MESSAGES_PATH[:-5]}/{sid}.json",
        }

    def sends(self) -> list[Recorded]:
        return [r for r in self.received() if r.method == "POST" and r.path.endswith("/Messages.json")]

    def messages_list(self, recorded: Recorded) -> dict[str, Any]:
        """`GET .../Messages.json?To=&From=&DateSent>=YYYY-MM-DD` as Twilio answers it: the messages this fake took
        (each sent at once), filtered by To, From and the UTC date they were sent, newest first."""
        query = {k: v[0] for k, v in parse_qs(urlsplit(recorded.path).query).items()}
        since = query.get("DateSent>", "")
        listed = []
        for send in self.sends():
            form = form_of(send)
            day = time.strftime("%Y-%m-%d", time.gmtime(send.at))
            if query.get("To") not in (None, form.get("To")) or query.get("From") not in (None, form.get("From")):
                continue
            if since and day < since:
                continue
            listed.append(
                {
                    "body": form.get("Body", ""),
                    "to": form.get("To"),
                    "from": form.get("From"),
                    "status": "sent",
                    "date_sent": time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime(send.at)),
                }
            )
        listed.reverse()
        return {"messages": listed[: int(query.get("PageSize") or 50)], "page": 0}


def twilio_error(code: int, message: str, status: int = 400) -> dict[str, Any]:
    return {
        "code": code,
        "message": message,
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    }


class FakeMega(_GatewayFake):
    """Mega API `POST /rest/sendMessage/{instance}/text`."""

    def default_answer(self, recorded: Recorded) -> Any:
        data = recorded.json.get("messageData", {})
        return {
            "error": False,
            "message": "Mensagem enviada com sucesso",
            "key": {"remoteJid": data.get("to", ""), "fromMe": True, "id": "3EB0" + uuid.uuid4().hex[:18].upper()},
            "messageTimestamp": int(time.time()),
            "status": "PENDING",
        }

    def sends(self) -> list[Recorded]:
        return [r for r in self.received() if r.path.startswith("/rest/sendMessage/")]


def form_of(recorded: Recorded) -> dict[str, str]:
    """The fields of a form-encoded request body (each given once)."""
    fields = parse_qs(recorded.body.decode(), keep_blank_values=True, strict_parsing=False)
    assert all(len(values) == 1 for values in fields.values()), fields
    return {name: values[0] for name, values in fields.items()}


def basic_auth(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


# ----- environment --------------------------------------------------------------------------------------------


def gateway_env(
    graph: FakeGraph | None = None, twilio: FakeTwilio | None = None, mega: FakeMega | None = None
) -> dict[str, str]:
    """Server overrides that switch on each gateway whose fake is given, pointed at that fake."""
    env: dict[str, str] = {}
    if graph is not None:
        env |= {
            "META_APP_SECRET": META_APP_SECRET,
            "META_VERIFY_TOKEN": META_VERIFY_TOKEN,
            "META_ACCESS_TOKEN": META_ACCESS_TOKEN,
            "META_PHONE_NUMBER_ID": META_PHONE_NUMBER_ID,
            "META_GRAPH_URL": graph.url,
            "META_API_VERSION": META_API_VERSION,
            "META_MARK_AS_READ": "false",
        }
    if twilio is not None:
        env |= {
            "TWILIO_ACCOUNT_SID": TWILIO_ACCOUNT_SID,
            "TWILIO_AUTH_TOKEN": TWILIO_AUTH_TOKEN,
            "TWILIO_WHATSAPP_FROM": TWILIO_WHATSAPP_FROM,
            "TWILIO_PUBLIC_URL": TWILIO_PUBLIC_URL,
            "TWILIO_API_URL": twilio.url,
        }
    if mega is not None:
        env |= {
            "MEGA_API_BASE_URL": mega.url,
            "MEGA_INSTANCE_ID": MEGA_INSTANCE,
            "MEGA_API_TOKEN": MEGA_API_TOKEN,
            "WEBHOOK_TOKEN": WEBHOOK_TOKEN,
        }
    return env


# ----- Meta webhooks ------------------------------------------------------------------------------------------


def wamid() -> str:
    return "wamid.HBgNNTUxMTk4NzY1NDMyMRUCABIYFjNFQjA" + uuid.uuid4().hex[:20].upper()


def meta_envelope(value: dict[str, Any]) -> dict[str, Any]:
    return {
        "object": "whatsapp_business_account",
        "entry": [{"id": "102290129340398", "changes": [{"value": value, "field": "messages"}]}],
    }


def meta_text(
    text: str, *, msg_id: str | None = None, number: str = CUSTOMER_NUMBER, name: str = CUSTOMER_NAME
) -> dict[str, Any]:
    """A Cloud API `messages` webhook carrying one text message from `number`."""
    return meta_envelope(
        {
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": META_DISPLAY_NUMBER, "phone_number_id": META_PHONE_NUMBER_ID},
            "contacts": [{"profile": {"name": name}, "wa_id": number}],
            "messages": [
                {
                    "from": number,
                    "id": msg_id or wamid(),
                    "timestamp": str(int(time.time())),
                    "text": {"body": text},
                    "type": "text",
                }
            ],
        }
    )


def meta_statuses(*statuses: str, number: str = CUSTOMER_NUMBER) -> dict[str, Any]:
    """A Cloud API webhook with only delivery statuses of a message we sent (sent, delivered, read...)."""
    sent_id = wamid()
    return meta_envelope(
        {
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": META_DISPLAY_NUMBER, "phone_number_id": META_PHONE_NUMBER_ID},
            "statuses": [
                {
                    "id": sent_id,
                    "status": status,
                    "timestamp": str(int(time.time())),
                    "recipient_id": number,
                    "conversation": {"id": "c0ffee" + uuid.uuid4().hex[:10], "origin": {"type": "service"}},
                    "pricing": {"billable": True, "pricing_model": "PMP", "category": "service"},
                }
                for status in statuses
            ],
        }
    )


def meta_signature(body: bytes, secret: str = META_APP_SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def meta_body(payload: dict[str, Any], *, ascii_only: bool = True) -> bytes:
    """Meta escapes non-ASCII characters (\\u00e1); `ascii_only=False` sends raw UTF-8 to prove the raw body is
    what gets verified."""
    return json.dumps(payload, ensure_ascii=ascii_only).encode()


def post_meta(
    base_url: str, payload: dict[str, Any] | bytes, *, signature: str | None = None, ascii_only: bool = True
) -> requests.Response:
    """POST a Cloud API webhook signed with META_APP_SECRET (or with the given `signature`; "" = no header)."""
    body = payload if isinstance(payload, bytes) else meta_body(payload, ascii_only=ascii_only)
    headers = {"Content-Type": "application/json", "User-Agent": "facebookexternalua"}
    signature = meta_signature(body) if signature is None else signature
    if signature:
        headers["X-Hub-Signature-256"] = signature
    return requests.post(f"{base_url}/webhook/meta", data=body, headers=headers, timeout=10)


# ----- Twilio webhooks ------------------------------------------------------------------------------------------


def twilio_form(
    text: str, *, sid: str | None = None, number: str = CUSTOMER_NUMBER, name: str = CUSTOMER_NAME
) -> dict[str, str]:
    """The form fields Twilio posts for an inbound WhatsApp text."""
    sid = sid or "SM" + uuid.uuid4().hex
    return {
        "SmsMessageSid": sid,
        "NumMedia": "0",
        "ProfileName": name,
        "MessageType": "text",
        "SmsSid": sid,
        "WaId": number,
        "SmsStatus": "received",
        "Body": text,
        "To": TWILIO_WHATSAPP_FROM,
        "NumSegments": "1",
        "ReferralNumMedia": "0",
        "MessageSid": sid,
        "AccountSid": TWILIO_ACCOUNT_SID,
        "From": f"whatsapp:+{number}",
        "ApiVersion": "2010-04-01",
    }


def twilio_signature(url: str, params: Mapping[str, str], token: str = TWILIO_AUTH_TOKEN) -> str:
    """Twilio's algorithm: base64(HMAC-SHA1(token, full URL + each POST field name and value, sorted by name))."""
    data = url + "".join(name + params[name] for name in sorted(params))
    return base64.b64encode(hmac.new(token.encode(), data.encode(), hashlib.sha1).digest()).decode()


def post_twilio(
    base_url: str,
    form: dict[str, str],
    *,
    query: str = "",
    signature: str | None = None,
    signed_url: str | None = None,
) -> requests.Response:
    """POST a Twilio webhook to the server, signed for TWILIO_PUBLIC_URL (or `signed_url`; `signature`="" = none)."""
    suffix = f"?{query}" if query else ""
    if signature is None:
        signature = twilio_signature(signed_url or f"{TWILIO_PUBLIC_URL}/webhook/twilio{suffix}", form)
    headers = {"User-Agent": "TwilioProxy/1.1", "I-Twilio-Idempotency-Token": uuid.uuid4().hex}
    if signature:
        headers["X-Twilio-Signature"] = signature
    return requests.post(f"{base_url}/webhook/twilio{suffix}", data=form, headers=headers, timeout=10)


# ----- Mega webhooks --------------------------------------------------------------------------------------------


def mega_text(
    text: str, *, msg_id: str | None = None, jid: str = CUSTOMER_JID, from_me: bool = False
) -> dict[str, Any]:
    """A Mega API webhook for one received text (messageType conversation)."""
    return {
        "instance_key": MEGA_INSTANCE,
        "jid": MEGA_BUSINESS_JID,
        "messageType": "conversation",
        "key": {"remoteJid": jid, "fromMe": from_me, "id": msg_id or uuid.uuid4().hex.upper()},
        "messageTimestamp": int(time.time()),
        "pushName": CUSTOMER_NAME,
        "broadcast": False,
        "message": {"conversation": text},
    }
