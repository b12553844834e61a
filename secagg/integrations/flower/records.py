"""How this library's bytes ride inside Flower messages.

Every message of the integration carries one ``ConfigRecord`` under :data:`RECORD` holding the
integration's version, the stage and the payload (``data``: bytes in this library's own validated
formats, :mod:`secagg.transport.envelope` and :mod:`secagg.protocol.wire`; nothing is pickled). The
server's first message of a round also carries Flower's usual ``"arrays"`` and ``"config"`` records,
so the user's ``@app.train()`` function reads them as in any Flower app.

Stages (server -> client ``stage``):

* ``"hello"``: who are you? The client mod answers its client id (``"client-id"``);
* ``"task"``: the round's first message: a :class:`~secagg.transport.envelope.Work` envelope (the
  secure session's Setup, the public weight bound and the client steps' public values) next to the
  global model; the mod runs the user's training, applies the client steps and answers;
* ``"protocol"``: the next secure-aggregation message of the round.
"""

from __future__ import annotations

from typing import Any

from secagg.errors import RemoteProtocolError

RECORD = "secagg"
STATE = "secagg.client"  # the client mod's record in the node's Context.state
VERSION = 1
HELLO, TASK, PROTOCOL = "hello", "task", "protocol"
STAGES = (HELLO, TASK, PROTOCOL)
#: Flower error code of a client's refusal (a ProtocolError, a wrong configuration) in a reply
REFUSED = 7100


def pack(stage: str, round_index: int, data: bytes = b"", **extra: Any):
    """The integration's ``ConfigRecord`` for one message."""
    from flwr.app import ConfigRecord

    return ConfigRecord({"version": VERSION, "stage": stage, "round": int(round_index), "data": bytes(data),
                         **extra})


def unpack(content, *, who: str) -> dict[str, Any] | None:
    """The integration's record of a message's ``content`` (``None`` without one), type-checked:
    :class:`RemoteProtocolError` naming ``who`` (the peer) and the field otherwise."""
    from flwr.app import ConfigRecord

    record = content.get(RECORD) if hasattr(content, "get") else None
    if record is None:
        return None
    if not isinstance(record, ConfigRecord):
        raise RemoteProtocolError(f"{who}: the {RECORD!r} record is a {type(record).__name__}, not a "
                                  f"ConfigRecord")
    fields = dict(record)
    if fields.get("version") != VERSION:
        raise RemoteProtocolError(f"{who}: {RECORD}.version is {fields.get('version')!r}, this side "
                                  f"speaks {VERSION}")
    if fields.get("stage") not in STAGES:
        raise RemoteProtocolError(f"{who}: {RECORD}.stage is {fields.get('stage')!r}, expected one of "
                                  f"{STAGES}")
    round_index = fields.get("round")
    if not isinstance(round_index, int) or isinstance(round_index, bool) or round_index < 0:
        raise RemoteProtocolError(f"{who}: {RECORD}.round must be an int >= 0, got {fields.get('round')!r}")
    if not isinstance(fields.get("data"), bytes):
        raise RemoteProtocolError(f"{who}: {RECORD}.data must be bytes, got "
                                  f"{type(fields.get('data')).__name__}")
    return fields
