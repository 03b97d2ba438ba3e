"""Evolution's sender, where the code outside gateways/ has always found it: `EvolutionSender` (sendText with
retries, SendError on failure) and the sendText URL and body helpers.

They live in gateways/evolution.py with the rest of the Evolution adapter; the HTTP helpers every gateway shares
are in gateways/http.py, and splitting a reply into messages is in reply_parts.py. Nothing under gateways/ imports
this module (it would be an import cycle).
"""

from __future__ import annotations

from gateways.evolution import EvolutionSender, evolution_body, evolution_send_url, evolution_server_url

__all__ = ["EvolutionSender", "evolution_body", "evolution_send_url", "evolution_server_url"]
