"""What every model provider is given and gives back, whatever its API: the system instruction's texts (persona,
grounding and knowledge, notes), the history as alternating turns, the JSON contract of a burst with media (the
reply, and a transcript or description per numbered item), and `Generated`, the answer with its token usage.

Pure: no SDK here. gemini_provider.py and openai_provider.py turn these into their own request shapes.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field

from config import Settings
from media import BurstPart
from memory import Turn
from usage import Usage

log = logging.getLogger(__name__)

BUSINESS_FIRST = "(a conversa começou com uma mensagem da empresa)"  # model-facing, see alternating_turns

# Added to the system instruction when the burst carries media bytes (model-facing, in the persona's language).
MEDIA_INSTRUCTION = (
    "A última mensagem do cliente inclui mídias numeradas ([mídia 1], [mídia 2], ...), na ordem em que ele "
    "enviou. Considere tudo (textos, áudios, imagens e documentos) e responda numa única mensagem. Responda "
    'somente com JSON: "reply" é o texto da resposta ao cliente; "media" tem um item por mídia numerada, com '
    '"n" (o número da mídia) e "text" (a transcrição fiel do áudio, ou uma descrição curta e objetiva da imagem '
    "ou do documento). Se alguma mídia aparece como não lida, não tente adivinhar o conteúdo nem peça desculpas "
    "por ela: um aviso ao cliente é acrescentado automaticamente."
)


@dataclass(frozen=True, slots=True)
class Generated:
    """The model's reply, per media item number (1-based, in burst order) its transcript or description, and the
    token usage of the calls that made it (a transcription, the reply; the provider that answered last)."""

    reply: str
    transcripts: dict[int, str] = field(default_factory=dict)
    usage: tuple[Usage, ...] = ()

    @property
    def provider(self) -> str:
        return self.usage[-1].provider if self.usage else ""


def persona(settings: Settings) -> str:
    """SYSTEM_PROMPT, naming BUSINESS_NAME."""
    text = settings.system_prompt
    if settings.business_name:
        text += f"\n\nA empresa se chama {settings.business_name}."
    return text


def alternating_turns(history: list[Turn], burst: object) -> list[tuple[str, list[object]]]:
    """(role, pieces) with roles "user" and "model" alternating: the history, then `burst` (one piece: a text or a
    provider's parts) as the last user turn. Consecutive turns of one role (a fallback that was not recorded, say)
    are merged; the business's turns (the bot's and a person's) are model turns; a conversation the business
    opened starts with a short user placeholder, so what it said is kept rather than dropped."""
    turns: list[tuple[str, list[object]]] = []
    for role, piece in [*((turn.role, turn.text) for turn in history), ("user", burst)]:
        role = "model" if role == "model" else "user"
        pieces = list(piece) if isinstance(piece, list) else [piece]
        if turns and turns[-1][0] == role:
            turns[-1] = (role, [*turns[-1][1], *pieces])
        else:
            turns.append((role, pieces))
    if turns and turns[0][0] == "model":
        turns.insert(0, ("user", [BUSINESS_FIRST]))
    return turns


def read_media_answer(text: str, *, usage: tuple[Usage, ...] = ()) -> Generated:
    """The reply and transcripts of a JSON answer; a non-JSON answer is taken whole as the reply."""
    try:
        data = json.loads(text)
    except ValueError:
        log.warning("the model answered a media burst without JSON; using its text as the reply, no transcripts")
        return Generated(text.strip(), usage=usage)
    if not isinstance(data, dict) or not isinstance(data.get("reply"), str):
        log.warning("the model's JSON answer has no reply; using its text as the reply")
        return Generated(text.strip(), usage=usage)
    transcripts: dict[int, str] = {}
    for item in data.get("media") or []:
        if isinstance(item, dict) and isinstance(item.get("n"), int) and isinstance(item.get("text"), str):
            transcripts[item["n"]] = item["text"].strip()
    return Generated(data["reply"].strip(), transcripts, usage)


def dry_run_reply(burst: list[BurstPart]) -> Generated:
    """AI_DRY_RUN: a canned pt-BR reply that quotes what the burst consolidated, so the debounce can be seen at work
    without spending tokens."""
    pieces = [item.describe() for item in burst]
    quoted = " / ".join(f"«{piece}»" for piece in pieces if piece)
    noun = "mensagem" if len(pieces) == 1 else "mensagens"
    return Generated(f"[simulação] Recebi {len(pieces)} {noun}: {quoted}")
