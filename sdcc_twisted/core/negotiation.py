"""Acceptor policy for association negotiation (PS3.8 7.1, PS3.7 Annex D).

A pure function of the A-ASSOCIATE-RQ and the settings: it returns either the
A-ASSOCIATE-AC to send, with the accepted presentation contexts, or the reject
triple.  The per-AE rule and the association cap need live state, so the
service decides them after this policy has accepted.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from sdcc_twisted.core.conformance import (
    APPLICATION_CONTEXT_NAME,
    DEFAULT_MAX_PDU_LENGTH,
    IMPLEMENTATION_CLASS_UID,
    IMPLEMENTATION_VERSION_NAME,
    PC_ABSTRACT_SYNTAX_NOT_SUPPORTED,
    PC_ACCEPTANCE,
    PC_TRANSFER_SYNTAXES_NOT_SUPPORTED,
    PC_USER_REJECTION,
    QUERY_RETRIEVE_SOP_CLASSES,
    REJECT_APPLICATION_CONTEXT,
    REJECT_CALLED_AE,
    REJECT_CALLING_AE,
    REJECT_PROTOCOL_VERSION,
    SUPPORTED_CONTEXTS,
    RejectReason,
)
from sdcc_twisted.core.pdu import (
    AAssociateAC,
    AAssociateRJ,
    AAssociateRQ,
    PresentationContextAC,
    RoleSelection,
    UserInformation,
)

#: Answer to a proposed Asynchronous Operations Window: synchronous only
#: (statement, "Asynchronicity"; PS3.7 D.3.3.3).
ASYNC_OPS_ANSWER: Final = (1, 1)


@dataclass(frozen=True)
class AcceptorPolicy:
    """What this SCP accepts.

    Attributes:
        ae_title: our AE title.
        require_called_ae: reject 1/1/7 when the Called AE differs from ours.
        allowed_calling_aes: if not None, reject 1/1/3 for any other calling AE;
            an entry ``AE@address`` admits that AE only from that peer address.
        max_pdu_length: the Maximum Length we propose (PS3.8 D.1); never 0.
        contexts: abstract syntax -> accepted transfer syntaxes, in our order.
        query_retrieve: offer the Query/Retrieve SOP classes at all; when
            False their contexts are answered 3 (abstract syntax not supported).
        allowed_query_aes: if not None, only these calling AEs (``AE`` or
            ``AE@address``) get Query/Retrieve contexts; the others' are
            answered 1 (user rejection), their other contexts stand.
    """

    ae_title: str = "SDCC"
    require_called_ae: bool = False
    allowed_calling_aes: frozenset[str] | None = None
    max_pdu_length: int = DEFAULT_MAX_PDU_LENGTH
    contexts: Mapping[str, tuple[str, ...]] = field(
        default_factory=lambda: SUPPORTED_CONTEXTS)
    query_retrieve: bool = True
    allowed_query_aes: frozenset[str] | None = None

    def __post_init__(self) -> None:
        if self.max_pdu_length <= 0:
            raise ValueError("max_pdu_length must be positive (0 means unlimited)")

    def calling_ae_allowed(self, calling_ae: str, peer_address: str | None) -> bool:
        """Whether the allow-list admits ``calling_ae`` from ``peer_address``."""
        return _admits(self.allowed_calling_aes, calling_ae, peer_address)

    def query_refusal(self, calling_ae: str, peer_address: str | None) -> int | None:
        """The presentation context result for this AE's Query/Retrieve
        contexts (PS3.8 9.3.3.2), or None when it may query and retrieve."""
        if not self.query_retrieve:
            return PC_ABSTRACT_SYNTAX_NOT_SUPPORTED
        if not _admits(self.allowed_query_aes, calling_ae, peer_address):
            return PC_USER_REJECTION
        return None


def _admits(allow_list: frozenset[str] | None, calling_ae: str,
            peer_address: str | None) -> bool:
    """Whether ``allow_list`` (None: anyone) holds ``calling_ae`` or
    ``calling_ae@peer_address``."""
    if allow_list is None or calling_ae in allow_list:
        return True
    return peer_address is not None and f"{calling_ae}@{peer_address}" in allow_list


@dataclass(frozen=True)
class AcceptedContext:
    """A presentation context we accepted."""

    context_id: int
    abstract_syntax: str
    transfer_syntax: str


@dataclass(frozen=True)
class Accepted:
    """The policy accepts: send ``ac``; ``contexts`` maps ID -> accepted context."""

    ac: AAssociateAC
    contexts: dict[int, AcceptedContext]
    peer_max_pdu_length: int
    roles: dict[str, tuple[int, int]] = field(default_factory=dict)

    def requestor_is_scp(self, sop_class_uid: str) -> bool:
        """PS3.7 D.3.3.4: the requestor may act as SCP for this SOP class
        (needed for the C-STORE sub-operations of a C-GET)."""
        return self.roles.get(sop_class_uid, (1, 0))[1] == 1


@dataclass(frozen=True)
class Rejected:
    """The policy rejects with this triple."""

    reason: RejectReason

    @property
    def rj(self) -> AAssociateRJ:
        """The A-ASSOCIATE-RJ PDU for this reason."""
        return reject_pdu(self.reason)


def reject_pdu(reason: RejectReason) -> AAssociateRJ:
    """Build the A-ASSOCIATE-RJ PDU for a reject triple (PS3.8 9.3.4)."""
    return AAssociateRJ(reason.result, reason.source, reason.reason)


def check_protocol_version(rq: AAssociateRQ) -> RejectReason | None:
    """PS3.8 9.3.2: only bit 0 of the protocol version is tested."""
    if not rq.protocol_version & 1:
        return REJECT_PROTOCOL_VERSION
    return None


def negotiate(rq: AAssociateRQ, policy: AcceptorPolicy,
              peer_address: str | None = None) -> Accepted | Rejected:
    """Decide an A-ASSOCIATE-RQ (PS3.8 7.1.1, 9.3.3; PS3.7 D.3.3).

    Order: application context (1/1/2), calling AE (1/1/3), called AE (1/1/7);
    then one answer per presentation context: 0 accepted, 1 user rejection
    (Query/Retrieve for an AE not on its allow-list), 3 abstract syntax not
    supported, 4 no transfer syntax supported.
    """
    if rq.application_context != APPLICATION_CONTEXT_NAME:
        return Rejected(REJECT_APPLICATION_CONTEXT)
    if not policy.calling_ae_allowed(rq.calling_ae, peer_address):
        return Rejected(REJECT_CALLING_AE)
    if policy.require_called_ae and rq.called_ae != policy.ae_title:
        return Rejected(REJECT_CALLED_AE)

    answers: list[PresentationContextAC] = []
    accepted: dict[int, AcceptedContext] = {}
    query_refusal = policy.query_refusal(rq.calling_ae, peer_address)
    for pc in rq.presentation_contexts:
        supported = policy.contexts.get(pc.abstract_syntax, ())
        chosen = next((ts for ts in pc.transfer_syntaxes if ts in supported), None)
        if not supported:
            result = PC_ABSTRACT_SYNTAX_NOT_SUPPORTED
        elif pc.abstract_syntax in QUERY_RETRIEVE_SOP_CLASSES and query_refusal is not None:
            result = query_refusal
        elif chosen is None:
            result = PC_TRANSFER_SYNTAXES_NOT_SUPPORTED
        else:
            result = PC_ACCEPTANCE
        if chosen is None or result != PC_ACCEPTANCE:
            answers.append(PresentationContextAC(
                pc.context_id, result, pc.transfer_syntaxes[0] if pc.transfer_syntaxes else ""))
            continue
        answers.append(PresentationContextAC(pc.context_id, PC_ACCEPTANCE, chosen))
        accepted[pc.context_id] = AcceptedContext(
            pc.context_id, pc.abstract_syntax, chosen)

    # PS3.7 D.3.3.4: answer each proposed role for a SOP class we accepted
    # with the roles proposed (we take whichever role the requestor leaves).
    accepted_classes = {c.abstract_syntax for c in accepted.values()}
    roles = {rs.sop_class_uid: (rs.scu_role, rs.scp_role)
             for rs in rq.user_information.role_selections
             if rs.sop_class_uid in accepted_classes}
    user_info = UserInformation(
        max_length=policy.max_pdu_length,
        implementation_class_uid=IMPLEMENTATION_CLASS_UID,
        implementation_version_name=IMPLEMENTATION_VERSION_NAME,
        async_ops=ASYNC_OPS_ANSWER if rq.user_information.async_ops is not None else None,
        role_selections=tuple(RoleSelection(uid, scu, scp) for uid, (scu, scp) in roles.items()),
    )
    ac = AAssociateAC(
        called_ae=rq.called_ae,
        calling_ae=rq.calling_ae,
        application_context=APPLICATION_CONTEXT_NAME,
        presentation_contexts=tuple(answers),
        user_information=user_info,
    )
    peer_max = rq.user_information.max_length or 0
    return Accepted(ac, accepted, peer_max, roles)
