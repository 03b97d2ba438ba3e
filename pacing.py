"""Outbound pacing, shared by every process and host through Redis: at most N sends per sending number in any
1-second window, and a minimum gap between two messages to the same customer.

Sends of one number are spaced at least 1/N s apart (a burst capacity of one: a second's worth never goes out at
once, which is what gets unofficial gateways' numbers banned and official ones rate-limited). Each send reserves
its moment in one Lua call that reads Redis's own clock, so processes on hosts with different clocks share one
schedule; the caller sleeps until its moment. A send is delayed, never dropped. When a gateway answers "too many
messages" anyway, `slow_down` pushes that number's next moment back by what it asked (Retry-After) or a default.

While Redis is down the same schedule is kept in this process (each process then paces on its own).
"""

from __future__ import annotations

import bisect
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from config import Settings
from models import ChatRef
from redis_keys import RedisKeys
from redis_link import RedisLink

# Extra room on each spacing: a send reaches the gateway some milliseconds after its reserved moment, not always the
# same, and N + 1 of them must not fall in one second's window because of that. With 5 %, a send may arrive up to
# 50 ms later than the one N sends after it (a busy host's scheduling) and the window still holds N.
JITTER_MARGIN = 1.05

# KEYS: 1 the number's reserved moments (ZSET), 2 the number's hold (a gateway asked it to slow down: STRING, the
#       moment it ends), 3 the customer's next free moment (STRING)
# ARGV: 1 spacing between two sends of the number (s, 0 = not paced), 2 gap between two messages to the customer (s,
#       0 = none)
# Reserves the earliest moment from now on that is after the hold and the customer's gap and `spacing` away from
# every moment already reserved for the number (a customer's gap does not hold the number's other customers back),
# and returns the seconds to wait until it (a string), by Redis's clock.
RESERVE_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local spacing, gap = tonumber(ARGV[1]), tonumber(ARGV[2])
local at = math.max(now, tonumber(redis.call('GET', KEYS[2]) or '0'), tonumber(redis.call('GET', KEYS[3]) or '0'))
if spacing > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - spacing)
  for _, taken in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], at - spacing, '+inf')) do
    local reserved = tonumber(taken)
    if reserved >= at + spacing then break end
    if reserved > at - spacing then at = reserved + spacing end
  end
  local member = string.format('%.6f', at)
  redis.call('ZADD', KEYS[1], member, member)
  redis.call('PEXPIRE', KEYS[1], math.ceil((at - now + spacing) * 1000) + 1000)
end
if gap > 0 then
  redis.call('SET', KEYS[3], string.format('%.6f', at + gap), 'PX', math.ceil((at + gap - now) * 1000) + 1000)
end
return string.format('%.6f', at - now)
"""

# KEYS: 1 the number's hold or the customer's next free moment. ARGV: 1 seconds from now before the next send.
# Pushes it back to at least now + ARGV[1] (a rate-limit answer); never brings it forward.
SLOW_DOWN_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local until_at = now + tonumber(ARGV[1])
if tonumber(redis.call('GET', KEYS[1]) or '0') < until_at then
  redis.call('SET', KEYS[1], string.format('%.6f', until_at), 'PX', math.ceil(tonumber(ARGV[1]) * 1000) + 1000)
end
return 1
"""


@dataclass(frozen=True, slots=True)
class PaceLimits:
    """Sends per second per sending number, by gateway (0 = not paced), and the gap between two messages to one
    customer of those gateways (the console's simulator is not a WhatsApp number: never paced)."""

    rates: dict[str, float]
    customer_gap_seconds: float = 0.0

    @classmethod
    def from_settings(cls, settings: Settings) -> PaceLimits:
        rates = {
            "evolution": settings.outbound_rate_evolution,
            "meta": settings.outbound_rate_meta,
            "twilio": settings.outbound_rate_twilio,
            "mega": settings.outbound_rate_mega,
        }
        return cls(rates, settings.outbound_customer_gap_seconds)

    def spacing(self, gateway: str) -> float:
        rate = self.rates.get(gateway, 0.0)
        return JITTER_MARGIN / rate if rate > 0 else 0.0

    def customer_gap(self, gateway: str) -> float:
        return self.customer_gap_seconds if gateway in self.rates else 0.0


class Pacer:
    """Reserves each send's moment (`wait_for_turn`), and slows a number down after a rate-limit answer."""

    def __init__(
        self,
        link: RedisLink,
        keys: RedisKeys,
        limits: PaceLimits,
        *,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.link = link
        self.keys = keys
        self.limits = limits
        self._sleep = sleep
        client = link.client
        self._reserve = client.register_script(RESERVE_LUA) if client is not None else None
        self._slow_down = client.register_script(SLOW_DOWN_LUA) if client is not None else None
        # While Redis is down: holds and customers' next moments, and each number's reserved moments (time.time()).
        self._local: dict[str, float] = {}
        self._slots: dict[str, list[float]] = {}
        self._lock = threading.Lock()
        self._waiting: dict[int, tuple[str, float]] = {}  # thread id -> (number, when its wait ends)
        self.delayed_sends = 0
        self.slowdowns = 0

    def enabled_for(self, chat: ChatRef) -> bool:
        return self.limits.spacing(chat.gateway) > 0 or self.limits.customer_gap(chat.gateway) > 0

    def wait_for_turn(self, chat: ChatRef, *, slowed_down: bool = False) -> float:
        """Reserve this send's moment and sleep until it; returns the seconds waited. Without pacing for this
        chat's gateway it returns at once, unless the number or customer was just `slowed_down` (a rate-limit
        answer is honoured whatever the settings)."""
        if not self.enabled_for(chat) and not slowed_down:
            return 0.0
        wait = self.reserve(chat)
        if wait <= 0:
            return 0.0
        number = _number(chat)
        me = threading.get_ident()
        with self._lock:
            self._waiting[me] = (number, time.time() + wait)
            self.delayed_sends += 1
        try:
            self._sleep(wait)
        finally:
            with self._lock:
                self._waiting.pop(me, None)
        return wait

    def reserve(self, chat: ChatRef) -> float:
        """The seconds until this send's moment, which is now reserved for it."""
        spacing, gap = self.limits.spacing(chat.gateway), self.limits.customer_gap(chat.gateway)
        number = _number(chat)
        keys = [self.keys.pace_number(number), self.keys.pace_hold(number), self.keys.pace_customer(chat.key)]
        reserve = self._reserve
        if reserve is None:
            return self._reserve_here(keys, spacing, gap)
        return float(
            self.link.run(
                lambda client: reserve(keys=keys, args=[spacing, gap], client=client),
                lambda: self._reserve_here(keys, spacing, gap),
            )
        )

    def slow_down(self, chat: ChatRef, seconds: float, *, scope: str = "number") -> None:
        """No send from this chat's number (`scope` "number") or to this chat's customer ("customer") for `seconds`:
        the gateway said it was too fast."""
        seconds = max(0.0, seconds)
        number = _number(chat)
        key = self.keys.pace_customer(chat.key) if scope == "customer" else self.keys.pace_hold(number)
        with self._lock:
            self.slowdowns += 1
        slow_down = self._slow_down
        if slow_down is None:
            self._slow_down_here(key, seconds)
            return
        self.link.run(
            lambda client: slow_down(keys=[key], args=[seconds], client=client),
            lambda: self._slow_down_here(key, seconds),
        )

    def health(self) -> dict[str, object]:
        """What /health shows: this process's sends waiting for their moment now (by sending number, the longest
        wait left), and how many waited or were slowed down since start."""
        now = time.time()
        with self._lock:
            waiting: dict[str, float] = {}
            for number, until in self._waiting.values():
                waiting[number] = max(waiting.get(number, 0.0), round(max(0.0, until - now), 3))
            return {
                "rates_per_second": {gateway: rate for gateway, rate in sorted(self.limits.rates.items())},
                "customer_gap_seconds": self.limits.customer_gap_seconds,
                "waiting_sends": len(self._waiting),
                "longest_wait_seconds": max(waiting.values(), default=0.0),
                "waiting_by_number": {_masked_number(n): w for n, w in sorted(waiting.items())},
                "delayed_sends": self.delayed_sends,
                "slowdowns": self.slowdowns,
            }

    def _reserve_here(self, keys: list[str], spacing: float, gap: float) -> float:
        """RESERVE_LUA's schedule, in this process."""
        now = time.time()
        slots_key, hold_key, customer_key = keys
        with self._lock:
            self._forget_past(now)
            at = max(now, float(self._local.get(hold_key, 0.0)), float(self._local.get(customer_key, 0.0)))
            if spacing > 0:
                slots: list[float] = self._slots.setdefault(slots_key, [])
                for reserved in slots:  # kept sorted
                    if reserved >= at + spacing:
                        break
                    if reserved > at - spacing:
                        at = reserved + spacing
                bisect.insort(slots, at)
            if gap > 0:
                self._local[customer_key] = at + gap
            return at - now

    def _slow_down_here(self, key: str, seconds: float) -> None:
        with self._lock:
            self._local[key] = max(self._local.get(key, 0.0), time.time() + seconds)

    def _forget_past(self, now: float) -> None:
        for slots_key, slots in list(self._slots.items()):
            del slots[: bisect.bisect_left(slots, now - 60)]
            if not slots:
                del self._slots[slots_key]
        if len(self._local) > 1000:
            for key in [key for key, at in self._local.items() if at < now]:
                del self._local[key]


def _number(chat: ChatRef) -> str:
    """The sending number's identity: the gateway and its instance (an Evolution or Mega instance, a Cloud API
    phone number id, a Twilio sender)."""
    gateway, instance, _ = chat.address.split(":", 2)  # the instance as the chat's keys spell it (percent-encoded)
    return f"{gateway}:{instance}"


def _masked_number(number: str) -> str:
    # A Twilio sender is a phone number: keep its last four digits only, as chat labels do.
    gateway, _, instance = number.partition(":")
    digits = sum(c.isdigit() for c in instance)
    return f"{gateway}:{'*' * (len(instance) - 4)}{instance[-4:]}" if digits >= 8 else number
