"""Hypothesis properties of the sans-I/O core under hostile input.

These complement the codec, framer and walker properties of test_pdu.py,
test_framing.py and test_dataset_head.py:

* the :class:`~sdcc_twisted.core.association.Association` facade, acceptor side,
  fed arbitrary and damaged byte streams in arbitrary splits, in Sta2 and
  once established (Sta6), driven the way the protocol adapter drives it;
* negotiation of generated, valid A-ASSOCIATE-RQs;
* the DIMSE :class:`~sdcc_twisted.core.dimse.MessageAssembler` on random PDV
  sequences and on valid messages cut at random;
* round trips: PDU streams through the framer in random splits, and command
  sets through encode_command / decode_command and through pydicom.

Budgets are modest (at most 200 examples, no deadline, no example database)
so that the suite stays fast; ``fuzz/fuzz_decoder.py`` is the long run.
"""

from __future__ import annotations

import struct
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from sdcc_twisted.core import conformance as c
from sdcc_twisted.core.association import Association
from sdcc_twisted.core.dimse import (
    COMMAND_DATA_SET_TYPE,
    COMMAND_FIELD,
    ERROR_COMMENT,
    MESSAGE_ID,
    MESSAGE_ID_BEING_RESPONDED_TO,
    PRIORITY,
    STATUS,
    VRS,
    MessageAssembler,
    decode_command,
    encode_command,
    response,
)
from sdcc_twisted.core.errors import DIMSEError
from sdcc_twisted.core.events import (
    Aborted,
    AssociationRequested,
    CloseTransport,
    CommandReceived,
    DataFragment,
    ReleaseRequested,
)
from sdcc_twisted.core.framing import PDUFramer
from sdcc_twisted.core.negotiation import AcceptorPolicy, Accepted, Rejected, negotiate
from sdcc_twisted.core.pdu import (
    PDV,
    AAbort,
    AAssociateAC,
    AAssociateRJ,
    AAssociateRQ,
    AReleaseRP,
    AReleaseRQ,
    PDataTF,
    PresentationContextAC,
    PresentationContextRQ,
    RoleSelection,
    UserInformation,
    decode,
    encode,
)

from .support import associate_rq, dataset_bytes, echo_command, store_command

#: The settings every property here runs with (see the module docstring).
BUDGET = settings(max_examples=200, deadline=None, database=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# -- strategies -----------------------------------------------------------------

#: UIDs (PS3.5 9.1: digits and dots, no leading zeros), built from integers
#: because from_regex is slow.
_uids = st.builds(lambda first, rest: ".".join(map(str, [first, *rest])),
                  st.integers(1, 999999), st.lists(st.integers(0, 99999999), max_size=6))
_AE_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"
#: AE titles: 1..16 characters, no leading or trailing space.
_ae_titles = st.builds(lambda a, mid, b: (a + mid + b)[:16].rstrip(), st.sampled_from(_AE_CHARS),
                       st.text(_AE_CHARS + " ", max_size=14),
                       st.sampled_from(["", *_AE_CHARS]))
_odd_ids = st.integers(0, 127).map(lambda n: 2 * n + 1)
_byte = st.integers(0, 255)

_STORAGE = sorted(c.STORAGE_SOP_CLASSES)
_KNOWN_SYNTAXES = sorted(c.TRANSFER_SYNTAXES)
_OTHER_SYNTAXES = ["1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.4.80",
                   "1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.100"]
#: Abstract syntaxes: ours (verification, storage, Q/R) and others.
_abstract_syntaxes = st.one_of(
    st.just(c.VERIFICATION_SOP_CLASS),
    st.sampled_from(_STORAGE),
    st.sampled_from(sorted(c.QUERY_RETRIEVE_SOP_CLASSES)),
    st.sampled_from(["1.2.840.10008.5.1.4.1.1.88.11", "1.2.840.10008.5.1.4.1.1.104.1"]),
    _uids,
)
_transfer_syntaxes = st.one_of(st.sampled_from(_KNOWN_SYNTAXES),
                               st.sampled_from(_OTHER_SYNTAXES), _uids)


@st.composite
def _requests(draw: st.DrawFn, app_context: Any = st.just(c.APPLICATION_CONTEXT_NAME)
              ) -> AAssociateRQ:
    """A valid A-ASSOCIATE-RQ: unique odd context IDs, 1..12 contexts of
    0..6 transfer syntaxes, maybe role selections and an async window."""
    ids = draw(st.lists(_odd_ids, min_size=1, max_size=12, unique=True))
    contexts = tuple(
        PresentationContextRQ(cid, draw(_abstract_syntaxes),
                              tuple(draw(st.lists(_transfer_syntaxes, max_size=6))))
        for cid in ids)
    proposed = [pc.abstract_syntax for pc in contexts]
    roles = draw(st.lists(st.builds(RoleSelection,
                                    st.sampled_from(proposed) | _uids,
                                    st.integers(0, 1), st.integers(0, 1)),
                          max_size=4, unique_by=lambda r: r.sop_class_uid))
    info = UserInformation(
        max_length=draw(st.integers(0, 2**32 - 1)),
        implementation_class_uid=draw(_uids),
        implementation_version_name=draw(st.none() | st.just("PROPTEST")),
        async_ops=draw(st.none() | st.tuples(st.integers(0, 65535), st.integers(0, 65535))),
        role_selections=tuple(roles),
        extended=tuple(draw(st.lists(st.tuples(st.integers(0x56, 0x59),
                                               st.binary(max_size=20)), max_size=2))),
    )
    return AAssociateRQ(called_ae=draw(_ae_titles), calling_ae=draw(_ae_titles),
                        application_context=draw(app_context),
                        presentation_contexts=contexts, user_information=info,
                        protocol_version=draw(st.sampled_from([1, 1, 1, 3, 0x8001, 2])))


_ac_strategy = st.builds(
    AAssociateAC, called_ae=_ae_titles, calling_ae=_ae_titles, application_context=_uids,
    presentation_contexts=st.lists(
        st.builds(PresentationContextAC, _odd_ids, st.integers(0, 4),
                  st.just("") | _uids),
        min_size=1, max_size=5, unique_by=lambda p: p.context_id).map(tuple),
    user_information=st.builds(UserInformation, max_length=st.integers(0, 2**32 - 1),
                               implementation_class_uid=_uids),
)
_pdata_strategy = st.builds(
    PDataTF, st.lists(st.builds(PDV, _odd_ids, st.integers(0, 3), st.binary(max_size=48)),
                      min_size=1, max_size=4).map(tuple))
_valid_pdus = st.one_of(
    _requests(app_context=st.just(c.APPLICATION_CONTEXT_NAME) | _uids), _ac_strategy,
    _pdata_strategy, st.builds(AAssociateRJ, _byte, _byte, _byte),
    st.builds(AAbort, _byte, _byte), st.just(AReleaseRQ()), st.just(AReleaseRP()))


def _message(context_id: int, command: bytes, data_set: bytes | None = None,
             piece: int = 64) -> bytes:
    """One DIMSE message as P-DATA-TFs (command whole, data set in pieces)."""
    out = encode(PDataTF((PDV(context_id, 0x03, command),)))
    if data_set is not None:
        chunks = [data_set[i:i + piece] for i in range(0, len(data_set), piece)] or [b""]
        for n, chunk in enumerate(chunks):
            out += encode(PDataTF((PDV(context_id, 0x02 if n == len(chunks) - 1 else 0x00,
                                       chunk),)))
    return out


_SMALL_DATA_SET = dataset_bytes("1.2.3.4.5", pixels=b"\x01\x02" * 8)
#: Meaningful pieces of a conversation: what a real requestor sends.
_real_pieces = st.sampled_from([
    encode(associate_rq()),
    encode(associate_rq(async_ops=(0, 0), max_length=4096)),
    _message(1, echo_command(7)),
    _message(3, store_command("1.2.3.4.5"), _SMALL_DATA_SET),
    _message(3, store_command("1.2.3.4.5", drop=(PRIORITY,)), _SMALL_DATA_SET),
    _message(5, echo_command(8)),                      # a context never accepted
    encode(AReleaseRQ()), encode(AReleaseRP()), encode(AAbort(0, 0)),
    b"\x04\x00\xff\xff\xff\xf0",                        # an absurd declared length
    b"\x09\x00\x00\x00\x00\x04\x00\x00\x00\x00",       # an unknown PDU type
])


@st.composite
def _pdu_shaped(draw: st.DrawFn) -> bytes:
    """A header with a known type and a plausible length, then random bytes."""
    pdu_type = draw(st.integers(1, 7))
    body = draw(st.binary(max_size=80))
    length = draw(st.just(len(body)) | st.integers(0, 120))
    return struct.pack("!BxL", pdu_type, length) + body


@st.composite
def _streams(draw: st.DrawFn) -> bytes:
    """A byte stream: real pieces, generated PDUs, PDU-shaped junk and raw
    garbage, concatenated, then maybe damaged in a few places."""
    parts = draw(st.lists(st.one_of(
        _real_pieces, _valid_pdus.map(encode), _pdu_shaped(), st.binary(max_size=40)),
        max_size=6))
    data = bytearray(b"".join(parts))
    for _ in range(draw(st.integers(0, 3))):
        if not data:
            break
        action = draw(st.sampled_from(["set", "cut", "insert"]))
        at = draw(st.integers(0, len(data) - 1))
        if action == "set":
            data[at] = draw(_byte)
        elif action == "cut":
            del data[at:at + draw(st.integers(1, 16))]
        else:
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
    return bytes(data)


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    """``data`` cut at the given offsets (those inside it)."""
    points = sorted({x for x in cuts if 0 < x < len(data)})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)])]


# -- the acceptor, driven like the protocol adapter drives it ------------------

class AcceptorDriver:
    """Feeds an acceptor and answers its events as the protocol adapter does:
    negotiate requests, answer C-ECHO, answer releases, close on
    CloseTransport.  Collects everything that was sent and every event."""

    def __init__(self, testcase: SynchronousTestCase, max_pdu_length: int = 4096,
                 max_other: int = 2048) -> None:
        self.testcase = testcase
        self.max_pdu_length = max_pdu_length
        self.max_other = max_other
        self.assoc = Association(max_pdu_length, max_command_length=1024,
                                 max_other_pdu_length=max_other)
        self.policy = AcceptorPolicy()
        self.events: list[Any] = []
        self.sent = bytearray()
        self.closed = False
        self.aborted = False
        self.handle(self.assoc.connection_made())

    def establish(self) -> None:
        """Associate with the standard request (contexts 1 and 3)."""
        self.feed(encode(associate_rq()))
        self.testcase.assertEqual(self.assoc.state, "Sta6")

    def feed(self, data: bytes) -> None:
        """Feed bytes; no exception may come out."""
        self.handle(self.assoc.receive_data(data))
        self.check_buffer()

    def handle(self, events: list[Any]) -> None:
        # One receive_data() call goes on past a PDU that needs an answer
        # (A-ASSOCIATE-RQ, A-RELEASE-RQ): a later PDU of the same read may
        # already have aborted the association when we get to answer, and
        # accept()/reject()/release_response() then raise LocalProtocolError.
        # So the answers are given only in the states that take them (see the
        # report on protocol.py; test_hostile pipelines such reads).
        assoc = self.assoc
        for event in events:
            self.events.append(event)
            if isinstance(event, AssociationRequested):
                if assoc.state != "Sta3":
                    continue
                decision = negotiate(event.request, self.policy, "127.0.0.1")
                if isinstance(decision, Accepted):
                    self.handle(assoc.accept(decision))
                else:
                    self.handle(assoc.reject(decision.rj))
            elif isinstance(event, CommandReceived):
                command = event.command
                if command.command_field == c.C_ECHO_RQ and assoc.established:
                    self.handle(assoc.send_message(
                        event.context_id, response(command, c.C_ECHO_RSP, 0)))
            elif isinstance(event, ReleaseRequested):
                if assoc.state in ("Sta8", "Sta9", "Sta12"):
                    self.handle(assoc.release_response())
            elif isinstance(event, Aborted):
                self.aborted = True
            elif isinstance(event, CloseTransport):
                self.closed = True
                self.handle(assoc.connection_lost())
        self.sent += assoc.data_to_send()

    def check_buffer(self) -> None:
        """Memory per association stays about one PDU (architecture.md)."""
        limit = max(self.max_pdu_length, self.max_other) + 6
        self.testcase.assertLessEqual(self.assoc._framer.buffered, limit)

    def check_output(self) -> list[Any]:
        """Everything we sent frames and decodes; A-ABORTs carry legal values."""
        frames = PDUFramer(1 << 22, 1 << 22).feed(bytes(self.sent))
        pdus = [decode(t, b) for t, b in frames]
        consumed = sum(6 + len(b) for _, b in frames)
        self.testcase.assertEqual(consumed, len(self.sent), "a partial PDU was sent")
        for pdu in pdus:
            self.testcase.assertNotIsInstance(pdu, AAssociateRQ)
            if isinstance(pdu, AAbort):
                self.testcase.assertIn(pdu.source, (0, 2))
                if pdu.source == 2:
                    self.testcase.assertIn(pdu.reason, (0, 1, 2, 4, 5, 6))
        return pdus


class AssociationPropertyTests(SynchronousTestCase):
    """Whatever bytes arrive, in whatever split, the facade answers with
    events (or an A-ABORT) and never raises."""

    def run_stream(self, driver: AcceptorDriver, data: bytes, cuts: list[int],
                   tail: bytes) -> list[Any]:
        for chunk in _split(data, cuts):
            driver.feed(chunk)
        if driver.aborted:
            # After an abort, more bytes, a timer and the close change nothing
            # and raise nothing.
            state = driver.assoc.state
            driver.feed(tail)
            if not driver.closed:
                self.assertEqual(driver.assoc.state, state)
        driver.handle(driver.assoc.timer_expired())
        driver.handle(driver.assoc.connection_lost())
        self.assertEqual(driver.assoc.state, "Sta1")
        driver.feed(tail)
        return driver.check_output()

    @BUDGET
    @given(_streams(), st.lists(st.integers(0, 600), max_size=12),
           st.binary(min_size=1, max_size=32))
    def test_sta2_any_bytes_any_split(self, data: bytes, cuts: list[int],
                                      tail: bytes) -> None:
        """An acceptor waiting for its A-ASSOCIATE-RQ (Sta2), fed any stream
        in any split, raises nothing; what it sends decodes; its first PDU
        is an A-ASSOCIATE-AC, -RJ or an A-ABORT; after an abort, further
        bytes, the ARTIM expiry and the close raise nothing either."""
        driver = AcceptorDriver(self)
        self.assertEqual(driver.assoc.state, "Sta2")
        pdus = self.run_stream(driver, data, cuts, tail)
        if pdus:
            self.assertIsInstance(pdus[0], (AAssociateAC, AAssociateRJ, AAbort))

    @BUDGET
    @given(_streams(), st.lists(st.integers(0, 600), max_size=12),
           st.binary(min_size=1, max_size=32))
    def test_sta6_any_bytes_any_split(self, data: bytes, cuts: list[int],
                                      tail: bytes) -> None:
        """An established acceptor (Sta6), fed any stream in any split, gives
        DIMSE events or ends with an A-ABORT; it never raises, before or
        after the abort; what it sends decodes."""
        driver = AcceptorDriver(self)
        driver.establish()
        self.run_stream(driver, data, cuts, tail)

    @BUDGET
    @given(st.binary(max_size=300), st.lists(st.integers(0, 300), max_size=10))
    def test_sta6_raw_bytes_abort_or_wait(self, data: bytes, cuts: list[int]) -> None:
        """Raw random bytes on an established association either stay
        buffered as an incomplete PDU or end it: every A-ABORT we send says
        the service provider and a PS3.8 reason, and the state is then Sta13
        (or Sta1 once closed)."""
        driver = AcceptorDriver(self)
        driver.establish()
        driver.sent.clear()
        for chunk in _split(data, cuts):
            driver.feed(chunk)
        pdus = driver.check_output()
        aborts = [p for p in pdus if isinstance(p, AAbort)]
        if any(isinstance(e, Aborted) and not e.by_peer and e.source is not None
               for e in driver.events):
            self.assertTrue(aborts, driver.events)
            self.assertIn(driver.assoc.state, ("Sta13", "Sta1"))

    @BUDGET
    @given(st.lists(st.tuples(_real_pieces, st.lists(st.integers(0, 400), max_size=6)),
                    min_size=1, max_size=8))
    def test_real_conversation_split_anywhere(self, pieces: list[tuple[bytes, list[int]]]
                                              ) -> None:
        """A conversation of real pieces (requests, messages, releases,
        aborts, bad headers) gives the same events, the same bytes out and
        the same final state whether each piece arrives in one read or cut
        into many (framing is invisible to the layers above).  Pieces are
        never merged into one read: what is answered between two reads
        legitimately depends on that."""
        def outcome(chunks: list[bytes]) -> tuple[list[Any], bytes, str]:
            driver = AcceptorDriver(self)
            for chunk in chunks:
                driver.feed(chunk)
            driver.check_output()
            return ([_comparable(e) for e in driver.events], bytes(driver.sent),
                    driver.assoc.state)

        whole = [piece for piece, _ in pieces]
        cut = [chunk for piece, cuts in pieces for chunk in _split(piece, cuts)]
        self.assertEqual(outcome(whole), outcome(cut))


class PipelinedReadTests(SynchronousTestCase):
    """Whole PDUs that precede a bad header in the same read."""

    def test_pdus_before_a_bad_header_are_delivered(self) -> None:
        """A C-ECHO-RQ followed, in the same read, by a header of unknown
        type is answered before the association is aborted, exactly as when
        the bad header arrives in a later read."""
        def run(chunks: list[bytes]) -> list[Any]:
            driver = AcceptorDriver(self)
            driver.establish()
            driver.events.clear()
            for chunk in chunks:
                driver.feed(chunk)
            return [_comparable(e) for e in driver.events]

        echo = _message(1, echo_command(3))
        bad = b"\x09\x00\x00\x00\x00\x04"
        separate = run([echo, bad])
        self.assertEqual(separate[0][0], "command")
        self.assertEqual(run([echo + bad]), separate)


def _comparable(event: Any) -> Any:
    """Events with their memoryviews turned into bytes, for comparison."""
    if isinstance(event, DataFragment):
        return ("data", event.context_id, bytes(event.data), event.last)
    if isinstance(event, CommandReceived):
        return ("command", event.context_id, event.command.elements)
    if isinstance(event, Aborted):
        return ("aborted", event.source, event.reason, event.by_peer)
    return event


# -- negotiation ---------------------------------------------------------------------

class NegotiationPropertyTests(SynchronousTestCase):
    """negotiate() on generated, valid A-ASSOCIATE-RQs."""

    @BUDGET
    @given(_requests())
    def test_every_context_answered_once(self, rq: AAssociateRQ) -> None:
        """With the standard application context and no AE checks, the
        request is accepted; every proposed context is answered exactly once,
        in order, with result 0, 3 or 4: 3 exactly when the abstract syntax
        is not ours, 4 exactly when none of its syntaxes is, and 0 with the
        first proposed syntax that we support.  The A-ASSOCIATE-AC encodes
        and decodes; it says Maximum Length 16384, and answers an async
        window 1/1 only when one was proposed; roles are answered only for
        accepted SOP classes, as proposed."""
        decision = negotiate(rq, AcceptorPolicy(), "127.0.0.1")
        self.assertIsInstance(decision, Accepted)
        assert isinstance(decision, Accepted)
        answers = decision.ac.presentation_contexts
        self.assertEqual([a.context_id for a in answers],
                         [p.context_id for p in rq.presentation_contexts])
        for proposed, answer in zip(rq.presentation_contexts, answers):
            supported = c.SUPPORTED_CONTEXTS.get(proposed.abstract_syntax)
            self.assertIn(answer.result, (0, 3, 4))
            if supported is None:
                self.assertEqual(answer.result, 3)
                self.assertNotIn(proposed.context_id, decision.contexts)
                continue
            wanted = [ts for ts in proposed.transfer_syntaxes if ts in supported]
            if not wanted:
                self.assertEqual(answer.result, 4)
                self.assertNotIn(proposed.context_id, decision.contexts)
                continue
            self.assertEqual(answer.result, 0)
            self.assertIn(answer.transfer_syntax, proposed.transfer_syntaxes)
            self.assertEqual(answer.transfer_syntax, wanted[0])
            accepted = decision.contexts[proposed.context_id]
            self.assertEqual((accepted.abstract_syntax, accepted.transfer_syntax),
                             (proposed.abstract_syntax, answer.transfer_syntax))
        self.assertEqual(set(decision.contexts),
                         {a.context_id for a in answers if a.result == 0})
        info = decision.ac.user_information
        self.assertEqual(info.max_length, 16384)
        self.assertEqual(info.async_ops,
                         (1, 1) if rq.user_information.async_ops is not None else None)
        accepted_classes = {a.abstract_syntax for a in decision.contexts.values()}
        for role in info.role_selections:
            self.assertIn(role.sop_class_uid, accepted_classes)
            self.assertIn(role, rq.user_information.role_selections)
        self.assertEqual(decision.peer_max_pdu_length, rq.user_information.max_length)
        wire = encode(decision.ac)
        self.assertEqual(decode(wire[0], wire[6:]), decision.ac)

    @BUDGET
    @given(_requests(app_context=_uids | st.just(c.APPLICATION_CONTEXT_NAME)),
           st.none() | st.lists(_ae_titles, max_size=3).map(frozenset),
           st.booleans(), _ae_titles)
    def test_reject_triples(self, rq: AAssociateRQ, allowed: frozenset[str] | None,
                            require_called: bool, our_title: str) -> None:
        """Under any policy, negotiate() never raises and rejects only with
        the documented triples, checked in the documented order: application
        context 1/1/2, calling AE 1/1/3, called AE 1/1/7."""
        policy = AcceptorPolicy(ae_title=our_title, require_called_ae=require_called,
                                allowed_calling_aes=allowed)
        decision = negotiate(rq, policy, "127.0.0.1")
        if rq.application_context != c.APPLICATION_CONTEXT_NAME:
            expected: tuple[int, int, int] | None = (1, 1, 2)
        elif allowed is not None and rq.calling_ae not in allowed:
            expected = (1, 1, 3)
        elif require_called and rq.called_ae != our_title:
            expected = (1, 1, 7)
        else:
            expected = None
        if expected is None:
            self.assertIsInstance(decision, Accepted)
        else:
            assert isinstance(decision, Rejected)
            rj = decision.rj
            self.assertEqual((rj.result, rj.source, rj.reason), expected)
            encode(rj)

    @BUDGET
    @given(_requests(), st.lists(st.integers(0, 4000), max_size=10))
    def test_through_the_facade(self, rq: AAssociateRQ, cuts: list[int]) -> None:
        """The same requests sent as bytes in any split reach Sta6 (or, with
        an even protocol version, an A-ASSOCIATE-RJ 1/2/2 from the upper
        layer), and the accepted contexts the facade records are those
        negotiate() chose."""
        driver = AcceptorDriver(self, max_other=1 << 20)
        for chunk in _split(encode(rq), cuts):
            driver.feed(chunk)
        pdus = driver.check_output()
        self.assertEqual(len(pdus), 1, pdus)
        if rq.protocol_version & 1:
            self.assertEqual(driver.assoc.state, "Sta6")
            decision = negotiate(rq, AcceptorPolicy())
            assert isinstance(decision, Accepted)
            self.assertEqual(pdus[0], decision.ac)
            self.assertEqual(driver.assoc.contexts, decision.contexts)
        else:
            self.assertEqual(pdus[0], AAssociateRJ(1, 2, 2))


# -- DIMSE assembly ------------------------------------------------------------------

_COMMANDS = [echo_command(1), store_command("1.2.3"), store_command("1.2.3", drop=(0x0800,)),
             encode_command({COMMAND_FIELD: c.C_ECHO_RQ, COMMAND_DATA_SET_TYPE: 0x0102})]
_pdvs = st.builds(
    PDV,
    st.sampled_from([1, 1, 1, 3, 5]) | _odd_ids,
    st.sampled_from([0, 1, 2, 3]) | _byte,
    st.one_of(st.sampled_from(_COMMANDS), st.binary(max_size=40),
              st.sampled_from(_COMMANDS).flatmap(
                  lambda cmd: st.integers(0, len(cmd)).map(lambda n: cmd[:n]))),
)


class AssemblerPropertyTests(SynchronousTestCase):
    """MessageAssembler on random and on valid PDV sequences."""

    @BUDGET
    @given(st.lists(st.lists(_pdvs, min_size=1, max_size=4), max_size=10))
    def test_random_pdvs(self, pdata_list: list[list[PDV]]) -> None:
        """Random PDV sequences give events or DIMSEError, nothing else; the
        events are well formed: data fragments follow a command that
        announced a data set, on its context, and end with ``last``."""
        assembler = MessageAssembler(max_command_length=512)
        events: list[Any] = []
        try:
            for pdvs in pdata_list:
                events += assembler.feed(PDataTF(tuple(pdvs)))
        except DIMSEError as exc:
            self.assertIn(exc.reason, (5, 6))
        expecting: int | None = None
        for event in events:
            if isinstance(event, CommandReceived):
                self.assertIsNone(expecting, "a command inside a data set")
                if event.command.has_data_set:
                    expecting = event.context_id
            else:
                self.assertIsInstance(event, DataFragment)
                self.assertEqual(event.context_id, expecting)
                if event.last:
                    expecting = None

    @BUDGET
    @given(st.lists(st.tuples(st.sampled_from([1, 3, 5, 255]),
                              st.sampled_from([echo_command(2), store_command("1.2.3.4")]),
                              st.binary(max_size=200),
                              st.lists(st.integers(0, 400), max_size=5),
                              st.lists(st.integers(0, 200), max_size=5)),
                    min_size=1, max_size=5),
           st.integers(1, 4))
    def test_valid_messages_any_fragmentation(self, messages: list[Any], group: int) -> None:
        """Valid messages, command and data set each cut into PDVs at random
        and grouped into P-DATA-TFs of ``group`` PDVs, come out as one
        CommandReceived with the decoded command and the data set bytes
        verbatim, on the right context, with ``last`` only at the end."""
        pdvs: list[PDV] = []
        expected: list[tuple[int, dict[int, Any], bytes | None]] = []
        for context_id, command, data_set, command_cuts, data_cuts in messages:
            pieces = _split(command, command_cuts)
            for n, piece in enumerate(pieces):
                pdvs.append(PDV(context_id, 0x01 | (0x02 if n == len(pieces) - 1 else 0),
                                piece))
            has_data = decode_command(command).has_data_set
            if has_data:
                pieces = _split(data_set, data_cuts) or [b""]
                for n, piece in enumerate(pieces):
                    pdvs.append(PDV(context_id, 0x02 if n == len(pieces) - 1 else 0, piece))
            expected.append((context_id, decode_command(command).elements,
                             data_set if has_data else None))
        assembler = MessageAssembler()
        events: list[Any] = []
        for start in range(0, len(pdvs), group):
            events += assembler.feed(PDataTF(tuple(pdvs[start:start + group])))
        self.assertFalse(assembler.in_message)
        got: list[Any] = []
        for event in events:
            if isinstance(event, CommandReceived):
                got.append([event.context_id, event.command.elements, None])
            else:
                self.assertEqual(event.context_id, got[-1][0])
                got[-1][2] = (got[-1][2] or b"") + bytes(event.data)
        self.assertEqual([tuple(g) for g in got], expected)

    @BUDGET
    @given(st.binary(max_size=200))
    def test_decode_command_any_bytes(self, data: bytes) -> None:
        """decode_command() of any bytes returns a Command or raises
        DIMSEError, nothing else."""
        try:
            command = decode_command(data)
        except DIMSEError:
            return
        command.missing()
        _ = (command.has_data_set, command.affected_sop_class_uid,
             command.affected_sop_instance_uid, command.message_id)


# -- round trips ------------------------------------------------------------------------

_US_ELEMENTS = sorted(e for e, vr in VRS.items() if vr == "US")
_TEXT_ELEMENTS = sorted(e for e, vr in VRS.items() if vr in ("UI", "AE", "LO"))


@st.composite
def _command_sets(draw: st.DrawFn) -> dict[int, Any]:
    """A command set of group 0000 elements with values valid for their VR."""
    elements: dict[int, Any] = {}
    for element in draw(st.lists(st.sampled_from(_US_ELEMENTS), max_size=8, unique=True)):
        elements[element] = draw(st.integers(0, 0xFFFF))
    for element in draw(st.lists(st.sampled_from(_TEXT_ELEMENTS), max_size=4, unique=True)):
        if VRS[element] == "UI":
            elements[element] = draw(_uids)
        elif VRS[element] == "AE":
            elements[element] = draw(_ae_titles)
        else:
            elements[element] = draw(st.builds(
                lambda a, mid, b: a + mid + b, st.sampled_from(_AE_CHARS),
                st.text(_AE_CHARS + " .,:", max_size=60), st.sampled_from(_AE_CHARS)))
    return elements


class RoundTripPropertyTests(SynchronousTestCase):
    """Encode then decode gives back what was encoded."""

    @BUDGET
    @given(st.lists(_valid_pdus, min_size=1, max_size=5),
           st.lists(st.integers(0, 3000), max_size=20))
    def test_pdu_stream_round_trip(self, pdus: list[Any], cuts: list[int]) -> None:
        """Generated valid PDUs, encoded back to back and cut anywhere, come
        out of the framer and decoder equal to what went in, and encoding
        is canonical (encode(decode(encode(x))) == encode(x))."""
        wire = [encode(p) for p in pdus]
        framer = PDUFramer(1 << 20, 1 << 20)
        frames = []
        for chunk in _split(b"".join(wire), cuts):
            frames += framer.feed(chunk)
        decoded = [decode(t, b) for t, b in frames]
        self.assertEqual([_plain(p) for p in decoded], [_plain(p) for p in pdus])
        self.assertEqual([encode(p) for p in decoded], wire)
        self.assertEqual(framer.buffered, 0)

    @BUDGET
    @given(_command_sets())
    def test_command_round_trip(self, elements: dict[int, Any]) -> None:
        """A generated command set survives encode_command -> decode_command
        unchanged, with a correct Command Group Length; pydicom, an
        independent decoder, reads the same values from the same bytes."""
        raw = encode_command(elements)
        decoded = decode_command(raw).elements
        group_length = decoded.pop(0x0000)
        self.assertEqual(group_length, len(raw) - 12)
        self.assertEqual(decoded, elements)

        from pydicom.filereader import read_dataset
        from pydicom.filebase import DicomBytesIO

        ds = read_dataset(DicomBytesIO(raw), is_implicit_VR=True, is_little_endian=True)
        theirs = {}
        for elem in ds:
            value = elem.value
            if isinstance(value, str):
                value = value.rstrip("\x00 ")
            theirs[elem.tag.element] = value
        theirs.pop(0x0000)
        self.assertEqual(theirs, elements)

    @BUDGET
    @given(_command_sets(), st.integers(0, 0xFFFF), st.none() | st.text(
        st.characters(min_codepoint=32, max_codepoint=126), max_size=100))
    def test_response_round_trip(self, elements: dict[int, Any], status: int,
                                 comment: str | None) -> None:
        """A response built for any request decodes to the status, the
        message ID answered, no data set, and an Error Comment of at most
        64 characters."""
        request = decode_command(encode_command(elements))
        rsp = decode_command(encode_command(response(request, 0x8001, status, comment)))
        self.assertEqual(rsp.get(STATUS), status)
        self.assertEqual(rsp.get(MESSAGE_ID_BEING_RESPONDED_TO), elements.get(MESSAGE_ID, 0))
        self.assertFalse(rsp.has_data_set)
        if comment and comment.strip():
            self.assertLessEqual(len(rsp.get(ERROR_COMMENT, "")), 64)
            self.assertEqual(rsp.get(ERROR_COMMENT), comment[:64].strip("\x00 "))


def _plain(pdu: Any) -> Any:
    """A PDU with PDV data as bytes (decode gives memoryviews)."""
    if isinstance(pdu, PDataTF):
        return tuple((p.context_id, p.control, bytes(p.data)) for p in pdu.pdvs)
    return pdu

