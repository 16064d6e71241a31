"""Sending one stored instance as a C-STORE: as stored when the receiver
accepted its syntax, else decoded for it (C-MOVE and C-GET sub-operations,
forwarding)."""

from __future__ import annotations

from sdcc_twisted.core.conformance import TRANSFER_SYNTAXES, sending_syntax, sop_class_name
from sdcc_twisted.services.channel import StoreSender
from sdcc_twisted.services.transcode import DecodeRefused, Transcoder


class SubOperationRefused(Exception):
    """A C-STORE sub-operation that could not even start: the reason for the
    log, and a short one for the final response's Error Comment."""

    def __init__(self, reason: str, short: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.short = short


def no_context(attributes: dict[str, str], whose: str) -> SubOperationRefused:
    """A sub-operation without a presentation context for the instance's
    class in its stored syntax, nor in one it can be decoded to (PS3.4
    C.4.3.3: a Failure when the SCU offered no appropriate context)."""
    syntax = attributes.get("transfer_syntax", "")
    return SubOperationRefused(
        f"{whose} accepted no context for {sop_class_name(attributes.get('sop_class_uid', ''))}"
        f" in {TRANSFER_SYNTAXES.get(syntax, syntax)} (its stored transfer syntax)",
        f"no context for {syntax}")


async def send_instance(sender: StoreSender, attributes: dict[str, str], whose: str,
                        transcoder: Transcoder | None, originator_ae: str = "",
                        originator_id: int | None = None) -> int:
    """One C-STORE: the file as stored when ``sender`` accepted its syntax,
    else decoded by ``transcoder`` to an uncompressed syntax it accepted
    (PS3.5 8.2); its C-STORE-RSP status.

    Raises:
        SubOperationRefused: no context for it, or it cannot be decoded.
    """
    sop_class = attributes.get("sop_class_uid", "")
    stored = attributes.get("transfer_syntax", "")

    def accepted(syntax: str) -> bool:
        return sender.store_context(sop_class, syntax) is not None
    syntax = (sending_syntax(stored, accepted) if transcoder is not None
              else stored if accepted(stored) else None)
    context_id = sender.store_context(sop_class, syntax) if syntax is not None else None
    if syntax is None or context_id is None:
        raise no_context(attributes, whose)
    sop_uid = attributes["SOPInstanceUID"]
    if syntax == stored or transcoder is None:
        return await sender.send_store(context_id, sop_class, sop_uid, attributes["path"],
                                       originator_ae, originator_id)
    try:
        path = await transcoder.decode(attributes["path"], syntax)
    except DecodeRefused as exc:
        raise SubOperationRefused(exc.reason, exc.short) from None
    try:
        return await sender.send_store(context_id, sop_class, sop_uid, path,
                                       originator_ae, originator_id)
    finally:
        await transcoder.discard(path)
