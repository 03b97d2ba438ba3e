"""Each gateway's `fetch_media` with its real HTTP client against a local fake of that gateway's media API:
Meta (media id -> Graph URL -> bytes, bearer token on both), Twilio (MediaUrl0 with basic auth), Mega
(downloadMediaMessage), and the shared download helpers (size bound, retries, base64)."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import pytest

from errors import MediaError
from gateways.http import decode_base64, download_session, fetch_bytes, fetch_json
from gateways.mega import MegaGateway
from gateways.meta import MetaGateway
from gateways.shared_secret import SharedSecretVerifier
from gateways.twilio import TwilioGateway
from models import ChatRef, MediaRef
from tests.fakes import Canned, FakeServer, Recorded
from tests.media_samples import ogg_opus_voice_note, pdf, png

VOICE = ogg_opus_voice_note(1.5, serial=77)
PHOTO = png(3, 3, (10, 200, 10))
TOKEN = "EAAG-media-test-token"


class FakeMediaHost(FakeServer):
    """Serves `files[path]` as bytes on GET, and Graph's media info for `/v23.0/<id>`."""

    files: dict[str, tuple[bytes, str]]

    def default_answer(self, recorded: Recorded) -> Any:
        path = recorded.path.split("?", 1)[0]
        if path.startswith("/v23.0/"):
            media_id = path.rsplit("/", 1)[-1]
            data, mime = self.files[f"/files/{media_id}"]
            return {
                "messaging_product": "whatsapp",
                "url": f"{self.url}/files/{media_id}?ext=1&hash=abc",
                "mime_type": mime,
                "sha256": "0" * 64,
                "file_size": len(data),
                "id": media_id,
            }
        if path in self.files:
            return self.files[path][0]
        return Canned(404, {"error": "not found"})


@pytest.fixture
def host() -> Iterator[FakeMediaHost]:
    fake = FakeMediaHost()
    fake.files = {"/files/MEDIA-1": (VOICE, "audio/ogg"), "/files/DOC-1": (pdf("Cardapio"), "application/pdf")}
    yield fake
    fake.close()


def meta(host: FakeMediaHost) -> MetaGateway:
    return MetaGateway(
        app_secret="s",
        verify_token="v",
        access_token=TOKEN,
        phone_number_id="1098",
        graph_url=host.url,
        api_version="v23.0",
        media_attempts=3,
        media_timeout_seconds=5,
    )


META_CHAT = ChatRef(gateway="meta", instance="1098", chat_id="5511987654321")


def test_meta_media_id_to_url_to_bytes_with_the_bearer_token(host: FakeMediaHost) -> None:
    data, mime = meta(host).fetch_media(
        META_CHAT, MediaRef(kind="audio", mime="audio/ogg; codecs=opus", source={"id": "MEDIA-1"}), max_bytes=10**6
    )
    assert (data, mime) == (VOICE, "audio/ogg")
    info, download = host.received()
    assert (info.method, info.path) == ("GET", "/v23.0/MEDIA-1")
    assert (download.method, download.path) == ("GET", "/files/MEDIA-1?ext=1&hash=abc")
    assert info.headers["authorization"] == download.headers["authorization"] == f"Bearer {TOKEN}"


def test_meta_refuses_a_file_over_the_limit_before_downloading_it(host: FakeMediaHost) -> None:
    with pytest.raises(MediaError) as caught:
        meta(host).fetch_media(META_CHAT, MediaRef(kind="audio", source={"id": "MEDIA-1"}), max_bytes=len(VOICE) - 1)
    assert caught.value.problem == "too_large"
    assert [r.path for r in host.received()] == ["/v23.0/MEDIA-1"]


def test_meta_retries_a_failing_graph_three_times_then_gives_up(host: FakeMediaHost) -> None:
    host.queue(*[Canned(503, {"error": {"code": 2, "message": "Service temporarily unavailable"}})] * 3)
    with pytest.raises(MediaError) as caught:
        meta(host).fetch_media(META_CHAT, MediaRef(kind="document", source={"id": "DOC-1"}), max_bytes=10**6)
    assert caught.value.problem == "unreadable"
    assert len(host.received()) == 3


def test_meta_expired_media_id_is_unreadable(host: FakeMediaHost) -> None:
    host.queue(Canned(400, {"error": {"code": 100, "message": "Unsupported get request"}}))
    with pytest.raises(MediaError):
        meta(host).fetch_media(META_CHAT, MediaRef(kind="image", source={"id": "GONE"}), max_bytes=10**6)
    assert len(host.received()) == 1  # a 400 is not retried


def test_twilio_media_url_with_basic_auth(host: FakeMediaHost) -> None:
    host.files["/2010-04-01/Accounts/AC1/Messages/MM1/Media/ME1"] = (PHOTO, "image/png")
    gateway = TwilioGateway(
        account_sid="AC1", auth_token="tw-token", whatsapp_from="whatsapp:+14155550100", public_url="https://bot"
    )
    url = f"{host.url}/2010-04-01/Accounts/AC1/Messages/MM1/Media/ME1"
    chat = ChatRef(gateway="twilio", instance="whatsapp:+14155550100", chat_id="whatsapp:+5511987654321")
    data, mime = gateway.fetch_media(
        chat, MediaRef(kind="image", mime="image/png", source={"url": url}), max_bytes=10**6
    )
    assert (data, mime) == (PHOTO, "image/png")
    (request,) = host.received()
    assert request.headers["authorization"] == "Basic " + base64.b64encode(b"AC1:tw-token").decode()


def test_mega_download_media_message(host: FakeMediaHost) -> None:
    host.queue(Canned(200, {"error": False, "message": "ok", "data": base64.b64encode(VOICE).decode()}))
    gateway = MegaGateway(
        base_url=host.url, instance_id="megastart-X1", token="mega-token", shared_secret=SharedSecretVerifier()
    )
    fields = {"mediaKey": "a2V5", "directPath": "/v/t62/enc", "url": "https://mmg/x.enc", "mimetype": "audio/ogg"}
    media = MediaRef(kind="audio", mime="audio/ogg", source={"key": {"id": "1"}, "message": {"audioMessage": fields}})
    chat = ChatRef(gateway="mega", instance="megastart-X1", chat_id="5511987654321@s.whatsapp.net")
    assert gateway.fetch_media(chat, media, max_bytes=10**6) == (VOICE, "audio/ogg")
    (request,) = host.received()
    assert request.path == "/rest/instance/downloadMediaMessage/megastart-X1"
    assert request.headers["authorization"] == "Bearer mega-token"
    assert request.json == {"messageKeys": {**fields, "messageType": "audio"}}


# ----- shared helpers ----------------------------------------------------------------------------------------


def test_fetch_bytes_stops_at_the_limit(host: FakeMediaHost) -> None:
    with pytest.raises(MediaError) as caught:
        fetch_bytes(download_session(1), "GET", f"{host.url}/files/MEDIA-1", what="t", max_bytes=100, timeout=5)
    assert caught.value.problem == "too_large"


def test_unreachable_host_is_unreadable_not_a_crash() -> None:
    with pytest.raises(MediaError) as caught:
        fetch_bytes(download_session(2, 0.01), "GET", "http://127.0.0.1:9/x", what="t", max_bytes=100, timeout=1)
    assert caught.value.problem == "unreadable"


@pytest.mark.parametrize("body", [b"<html>502 Bad Gateway</html>", b'["not", "an", "object"]'], ids=["html", "list"])
def test_fetch_json_refuses_an_answer_that_is_not_a_json_object(host: FakeMediaHost, body: bytes) -> None:
    host.files["/files/ANSWER"] = (body, "text/html")
    with pytest.raises(MediaError) as caught:
        fetch_json(download_session(1), "GET", f"{host.url}/files/ANSWER", what="t", max_bytes=1000, timeout=5)
    assert caught.value.problem == "unreadable"


def test_fetch_json_reads_a_json_object(host: FakeMediaHost) -> None:
    host.files["/files/ANSWER"] = (b'{"base64": "AAEC", "mimetype": "image/png"}', "application/json")
    answer = fetch_json(download_session(1), "GET", f"{host.url}/files/ANSWER", what="t", max_bytes=1000, timeout=5)
    assert answer == {"base64": "AAEC", "mimetype": "image/png"}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (base64.b64encode(PHOTO).decode(), PHOTO),
        ("data:image/png;base64," + base64.b64encode(PHOTO).decode(), PHOTO),
        (base64.encodebytes(PHOTO).decode(), PHOTO),  # with line breaks
    ],
    ids=["plain", "data_url", "line_breaks"],
)
def test_decode_base64_accepts_the_shapes_gateways_send(value: str, expected: bytes) -> None:
    assert decode_base64(value, what="t", max_bytes=10**6) == expected


@pytest.mark.parametrize("value", ["not base64!!", "", None, 42])
def test_decode_base64_rejects_junk_as_unreadable(value: Any) -> None:
    with pytest.raises(MediaError) as caught:
        decode_base64(value, what="t", max_bytes=10**6)
    assert caught.value.problem == "unreadable"


def test_decode_base64_over_the_limit_is_too_large() -> None:
    with pytest.raises(MediaError) as caught:
        decode_base64(base64.b64encode(PHOTO).decode(), what="t", max_bytes=len(PHOTO) - 1)
    assert caught.value.problem == "too_large"
