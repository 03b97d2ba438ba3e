"""The web layer: one Flask blueprint per thing it serves (gateway webhooks, the chats API, the knowledge admin
endpoints, health), each reading the process's pipeline from `current_app`. `webhook.create_app` only wires them.
"""

from __future__ import annotations

from flask import current_app

from components import Components


def components() -> Components:
    """The pipeline of the app serving this request."""
    parts: Components = current_app.extensions["assistant"]
    return parts
