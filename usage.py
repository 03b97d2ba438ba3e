"""What the models cost: the tokens of every call (both providers report them), priced from MODEL_PRICES, summed per
chat and per day in Redis (`UsageLedger`), for the panel, `/admin/api/chats/<chat>` and the archive.

MODEL_PRICES is the owner's own price list, `model:input/output,...` in USD per million tokens, e.g.
`gemini-3-flash-preview:0.5/3,gpt-4o-mini:0.15/0.6`; a model without a price counts tokens at no cost.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from models import ChatRef
from redis_keys import RedisKeys
from redis_link import RedisLink

MICRO = 1_000_000  # costs are summed in micro-dollars (integers: HINCRBY is exact, floats drift)
DAYS_KEPT = 400
CHAT_DAYS_KEPT = 90  # a chat's sum, from its last reply on (the archive keeps every call for good)

# One call instead of a MULTI of a dozen HINCRBYs: a reply's sums were a sixth of the Redis commands it sent.
# KEYS: the chat's sums (and its conversation's), then the day's. ARGV: the TTL of the first ones, the day's TTL,
# then per model call: input tokens, output tokens, cost in micro-USD, and "provider:model:" for the day's fields.
# The day's key is the one of the chat's shard (redis_keys.py), so that on a Redis Cluster all are in one slot.
RECORD_LUA = """
local day = KEYS[#KEYS]
for i = 3, #ARGV, 4 do
  local input, output, cost, model = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  for k = 1, #KEYS do
    redis.call('HINCRBY', KEYS[k], 'input_tokens', input)
    redis.call('HINCRBY', KEYS[k], 'output_tokens', output)
    redis.call('HINCRBY', KEYS[k], 'cost_micro_usd', cost)
  end
  redis.call('HINCRBY', day, model .. 'input_tokens', input)
  redis.call('HINCRBY', day, model .. 'output_tokens', output)
  redis.call('HINCRBY', day, model .. 'calls', 1)
end
redis.call('EXPIRE', day, ARGV[2])
for k = 1, #KEYS - 1 do
  redis.call('EXPIRE', KEYS[k], ARGV[1])
end
return 1
"""


@dataclass(frozen=True, slots=True, kw_only=True)
class Usage:
    """The tokens of one model call."""

    provider: str
    model: str
    input_tokens: int = 0
    output_tokens: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "provider": self.provider,
            "model": self.model,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
        }


def parse_prices(raw: str) -> dict[str, tuple[float, float]]:
    """`model:input/output,...` -> {model: (USD per million input tokens, per million output tokens)}."""
    prices: dict[str, tuple[float, float]] = {}
    for item in filter(None, (piece.strip() for piece in raw.split(","))):
        model, sep, pair = item.rpartition(":")
        given_in, slash, given_out = pair.partition("/")
        try:
            if not sep or not slash or not model.strip():
                raise ValueError
            price_in, price_out = float(given_in), float(given_out)
        except ValueError:
            raise ValueError(f"expected model:input/output (USD per million tokens), got {item!r}") from None
        if price_in < 0 or price_out < 0:
            raise ValueError(f"prices cannot be negative: {item!r}")
        prices[model.strip()] = (price_in, price_out)
    return prices


@dataclass(frozen=True, slots=True)
class Prices:
    table: dict[str, tuple[float, float]]

    @classmethod
    def from_settings(cls, raw: str) -> Prices:
        return cls(parse_prices(raw))

    def cost_usd(self, usage: Usage) -> float:
        """What the call cost, in USD (0 for a model without a price)."""
        price_in, price_out = self.table.get(usage.model, (0.0, 0.0))
        return (usage.input_tokens * price_in + usage.output_tokens * price_out) / 1_000_000


def totals(fields: Mapping[str, Any]) -> dict[str, Any]:
    """A usage hash as the API shows it."""
    return {
        "input_tokens": int(fields.get("input_tokens") or 0),
        "output_tokens": int(fields.get("output_tokens") or 0),
        "cost_usd": round(int(fields.get("cost_micro_usd") or 0) / MICRO, 6),
    }


class UsageLedger:
    """Sums per chat (`P:chat:{chat}:usage`, for 90 days after its last reply) and per UTC day (`P:usage:{day}`,
    also by provider and model, for 400 days). Best effort: while Redis is down the sums of that time are not kept
    (the calls still are, in the archive)."""

    def __init__(self, link: RedisLink, keys: RedisKeys, prices: Prices) -> None:
        self.link = link
        self.keys = keys
        self.prices = prices
        self._record = link.client.register_script(RECORD_LUA) if link.client is not None else None

    def record(self, chat: ChatRef, calls: list[Usage], *, now: float | None = None, conversation: str = "") -> float:
        """Add the calls of one reply to the chat's, its conversation's (`conversation`: when it opened, as the
        conversation HASH stores it) and the day's sums; returns their cost in USD."""
        cost, keys, args = self._sums(chat, calls, now=now, conversation=conversation)
        record = self._record
        if keys and record is not None:  # without Redis the sums are not kept (the archive keeps the calls)
            self.link.run(lambda client: record(keys=keys, args=args, client=client), lambda: None)
        return cost

    def adder(
        self, chat: ChatRef, calls: list[Usage], *, now: float | None = None, conversation: str = ""
    ) -> tuple[float, Callable[[Any], None] | None]:
        """What `record` does, as a hook that queues it in another call's pipeline (the fence's, so that a reply
        costs one round trip less), with the cost in USD. The hook sends the script's text (EVAL): a pipeline
        cannot load a script it finds missing without running its other commands twice."""
        cost, keys, args = self._sums(chat, calls, now=now, conversation=conversation)
        if not keys:
            return cost, None

        def add(pipe: Any) -> None:
            # execute_command: redis-py's cluster pipeline has no `eval()` of its own (its `eval` is another thing).
            pipe.execute_command("EVAL", RECORD_LUA, len(keys), *keys, *args)

        return cost, add

    def _sums(
        self, chat: ChatRef, calls: list[Usage], *, now: float | None, conversation: str
    ) -> tuple[float, list[str], list[int | str]]:
        """(cost in USD, the script's keys, its args); no keys when there are no calls."""
        if not calls:
            return 0.0, [], []
        costs = [self.prices.cost_usd(call) for call in calls]
        day_key = self.keys.usage_day(self.day(now or time.time()), self.keys.shard(chat.key))
        kept = [self.keys.usage(chat.key)]  # the chat's and the conversation's sums, kept CHAT_DAYS_KEPT
        if conversation:
            kept.append(self.keys.conversation_usage(chat.key, conversation))
        args: list[int | str] = [CHAT_DAYS_KEPT * 86400, DAYS_KEPT * 86400]
        for call, cost in zip(calls, costs, strict=True):
            args += [call.input_tokens, call.output_tokens, round(cost * MICRO), f"{call.provider}:{call.model}:"]
        return sum(costs), [*kept, day_key], args

    def of_chat(self, chat: ChatRef) -> dict[str, Any]:
        return self._totals(self.keys.usage(chat.key))

    def of_conversation(self, chat: ChatRef, conversation: str) -> dict[str, Any]:
        return self._totals(self.keys.conversation_usage(chat.key, conversation))

    def _totals(self, key: str) -> dict[str, Any]:
        return totals(self.link.run(lambda client: client.hgetall(key), dict))

    def of_day(self, day: str) -> dict[str, Any]:
        """The day's totals (summed over the shards), and by provider:model (tokens and calls)."""
        fields: dict[str, int] = {}
        for shard_fields in self.link.run(lambda client: self._day_by_shard(client, day), list):
            for name, value in shard_fields.items():
                fields[name] = fields.get(name, 0) + int(value)
        models: dict[str, dict[str, int]] = {}
        for name, value in fields.items():
            head, _, what = name.rpartition(":")
            if head:
                models.setdefault(head, {})[what] = int(value)
        return {**totals(fields), "day": day, "by_model": dict(sorted(models.items()))}

    def _day_by_shard(self, client: Any, day: str) -> list[dict[str, str]]:
        with client.pipeline(transaction=False) as pipe:
            for shard in self.keys.all_shards():
                pipe.hgetall(self.keys.usage_day(day, shard))
            return list(pipe.execute())

    @staticmethod
    def day(at: float) -> str:
        return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d")
