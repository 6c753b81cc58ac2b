"""Client-side fixed clipping (Flower's fixedclipping_mod) only when the server asks for it.

Flower's mod answers a training message without a clipping norm with an error, so it cannot
sit in the ClientApp unconditionally; this mod runs it when the server's strategy is wrapped
in DifferentialPrivacyClientSideFixedClipping (server/strategy.py, federation.dp_clipping_norm)
and passes every other message straight through.
"""
from __future__ import annotations

from flwr.app import Context, Message
from flwr.clientapp.mod import fixedclipping_mod
from flwr.clientapp.typing import ClientAppCallable
from flwr.app import MessageType

from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM  # what Flower's DP wrappers send


def optional_clipping_mod(message: Message, context: Context, call_next: ClientAppCallable) -> Message:
    if message.metadata.message_type == MessageType.TRAIN and any(
            KEY_CLIPPING_NORM in record for record in message.content.config_records.values()):
        return fixedclipping_mod(message, context, call_next)
    return call_next(message, context)
