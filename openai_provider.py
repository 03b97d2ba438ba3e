"""OpenAI and OpenAI-compatible servers (Ollama, vLLM, LM Studio, OpenRouter, Azure OpenAI) through the official
`openai` client and Chat Completions, which is what compatible servers speak: the one module that knows their
request shapes, errors and usage.

Voice notes and audio are transcribed first (the audio transcription endpoint, OPENAI_TRANSCRIBE_MODEL) and go to
the model as words; images go as `image_url` parts and PDFs as `file` parts (data URLs). A burst with images or
documents asks for JSON (`response_format: json_object`) with the reply and a description per numbered item, as
the Gemini path does. Retries on 408/409/429/5xx and connection errors are the client's own (OPENAI_MAX_RETRIES);
whatever still fails is raised as AIServiceError for the chain (ai_service.py) to decide.
"""

from __future__ import annotations

import base64
from typing import Any

import openai

from config import Settings
from errors import AIServiceError
from media import BurstPart
from memory import Turn
from prompt import MEDIA_INSTRUCTION, Generated, alternating_turns, read_media_answer
from usage import Usage

AUDIO_KINDS = frozenset({"audio"})
NO_KEY = "not-needed"  # a local compatible server (Ollama) takes any key; the client insists on one


def _data_url(item: BurstPart) -> str:
    return f"data:{item.mime};base64,{base64.b64encode(item.data or b'').decode()}"


def _is_audio(item: BurstPart) -> bool:
    return item.media is not None and item.media.kind in AUDIO_KINDS


class OpenAIProvider:
    """A configured `openai.OpenAI` client."""

    name = "openai"

    def __init__(self, settings: Settings) -> None:
        self.model = settings.openai_model
        self.transcribe_model = settings.openai_transcribe_model
        self.configured = settings.openai_configured
        self._client: openai.OpenAI | None = None
        if self.configured:
            self._client = openai.OpenAI(
                api_key=settings.openai_api_key or NO_KEY,
                base_url=settings.openai_base_url or None,
                timeout=settings.openai_timeout_seconds,
                max_retries=settings.openai_max_retries,
            )

    def generate(self, history: list[Turn], burst: list[BurstPart], *, instruction: list[str]) -> Generated:
        """One reply to the burst (voice notes transcribed first); with images or documents, JSON with their
        descriptions.

        Raises:
            AIServiceError: not configured, every attempt failed, an item refused (status 400: the caller asks
                again with the media as words), or an empty answer.
        """
        client = self._require_client()
        usage: list[Usage] = []
        heard: dict[int, str] = {}
        content: list[dict[str, Any]] = []
        number = 0
        for item in burst:
            if not item.readable:
                content.append({"type": "text", "text": item.describe()})
                continue
            number += 1
            if _is_audio(item):
                heard[number] = self._transcribe(client, item, usage)
                content.append({"type": "text", "text": f"{item.prompt_label(number)} (transcrição) {heard[number]}"})
            else:
                content.append({"type": "text", "text": item.prompt_label(number)})
                content.append(self._media_part(item, number))
            if item.text:
                content.append({"type": "text", "text": item.text})
        describes = number > len(heard)  # images or documents the model must describe
        system = "\n\n".join([*instruction, MEDIA_INSTRUCTION] if describes else instruction)
        user: Any = content if describes else "\n".join(part["text"] for part in content if part.get("text"))
        messages = [{"role": "system", "content": system}, *self._history(history, user)]
        answer = self._complete(client, messages, json_mode=describes, usage=usage)
        if describes:
            generated = read_media_answer(answer, usage=tuple(usage))
            if not generated.reply:
                raise AIServiceError("openai returned an empty reply in its JSON answer", transient=False)
            return Generated(generated.reply, {**generated.transcripts, **heard}, generated.usage)
        return Generated(answer, heard, tuple(usage))

    # ----- pieces ----------------------------------------------------------------------------------

    def _require_client(self) -> openai.OpenAI:
        if self._client is None:
            raise AIServiceError("OPENAI_API_KEY (or OPENAI_BASE_URL) is not set", transient=False)
        return self._client

    @staticmethod
    def _history(history: list[Turn], user: Any) -> list[dict[str, Any]]:
        messages = []
        for role, pieces in alternating_turns(history, [user] if isinstance(user, list) else user):
            if len(pieces) == 1 and isinstance(pieces[0], list):  # the burst's content parts
                content: Any = pieces[0]
            elif any(isinstance(piece, list) for piece in pieces):  # parts after merged text turns
                content = [
                    part
                    for piece in pieces
                    for part in (piece if isinstance(piece, list) else [{"type": "text", "text": str(piece)}])
                ]
            else:
                content = "\n".join(str(piece) for piece in pieces)
            messages.append({"role": "assistant" if role == "model" else "user", "content": content})
        return messages

    @staticmethod
    def _media_part(item: BurstPart, number: int) -> dict[str, Any]:
        if item.mime.startswith("image/"):
            return {"type": "image_url", "image_url": {"url": _data_url(item)}}
        name = (item.media.file_name if item.media else "") or f"documento-{number}.pdf"
        return {"type": "file", "file": {"filename": name, "file_data": _data_url(item)}}

    def _transcribe(self, client: openai.OpenAI, item: BurstPart, usage: list[Usage]) -> str:
        extension = item.mime.split("/")[-1].split(";")[0].strip() or "ogg"
        try:
            answer = client.audio.transcriptions.create(
                model=self.transcribe_model, file=(f"audio.{extension}", item.data or b"", item.mime)
            )
        except openai.APIError as exc:
            raise _error("transcription", exc) from exc
        tokens = getattr(answer, "usage", None)
        if tokens is not None and getattr(tokens, "type", "") == "tokens":
            usage.append(
                Usage(
                    provider=self.name,
                    model=self.transcribe_model,
                    input_tokens=int(getattr(tokens, "input_tokens", 0) or 0),
                    output_tokens=int(getattr(tokens, "output_tokens", 0) or 0),
                )
            )
        return (answer.text or "").strip()

    def _complete(
        self, client: openai.OpenAI, messages: list[dict[str, Any]], *, json_mode: bool, usage: list[Usage]
    ) -> str:
        extra: dict[str, Any] = {"response_format": {"type": "json_object"}} if json_mode else {}
        try:
            response = client.chat.completions.create(model=self.model, messages=messages, **extra)  # type: ignore[arg-type]
        except openai.APIError as exc:
            raise _error("chat completion", exc) from exc
        if response.usage is not None:
            usage.append(
                Usage(
                    provider=self.name,
                    model=self.model,  # as priced in MODEL_PRICES (the server may answer a dated name)
                    input_tokens=response.usage.prompt_tokens or 0,
                    output_tokens=response.usage.completion_tokens or 0,
                )
            )
        text = (response.choices[0].message.content or "").strip() if response.choices else ""
        if not text:
            reason = response.choices[0].finish_reason if response.choices else "no choices"
            raise AIServiceError(f"openai returned no text ({reason})", transient=False)
        return text


def _error(what: str, exc: openai.APIError) -> AIServiceError:
    """The client's error (after its own retries) as the worker's."""
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        # A refused item (unsupported content, a corrupt file) is a 400 for that content: the caller asks again
        # with the media as words. 415/422 mean the same from some compatible servers.
        code = 400 if status in (400, 415, 422) else status
        return AIServiceError(
            f"openai {what} answered {status}", transient=status in (408, 409, 429) or status >= 500, status_code=code
        )
    if isinstance(exc, openai.APITimeoutError):
        return AIServiceError(f"openai {what} timed out")
    return AIServiceError(f"openai unreachable ({what}): {exc.__class__.__name__}")
