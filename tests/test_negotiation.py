"""Acceptor policy: contexts, reject triples and the A-ASSOCIATE-AC contents."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from sdcc_twisted.core import conformance as c
from sdcc_twisted.core.negotiation import AcceptorPolicy, Accepted, Rejected, negotiate

from .support import CT, associate_rq

UNKNOWN_SOP = "1.2.840.10008.5.1.4.1.1.88.11"  # Basic Text SR: not in the statement


class ContextTests(SynchronousTestCase):
    """One answer per presentation context (PS3.8 Table 9-18)."""

    def test_accepts_every_statement_context(self) -> None:
        """Every SOP class of the statement is accepted with each of the nine
        transfer syntaxes when proposed alone."""
        policy = AcceptorPolicy()
        context_id = 1
        contexts = []
        for sop in c.STORAGE_SOP_CLASSES:
            for ts in c.TRANSFER_SYNTAXES:
                contexts.append((context_id, sop, (ts,)))
                context_id += 2
        # 30 classes x 9 syntaxes is more than 128 contexts: check in batches.
        for start in range(0, len(contexts), 120):
            batch = tuple(contexts[start:start + 120])
            result = negotiate(associate_rq(contexts=batch), policy)
            assert isinstance(result, Accepted)
            for (cid, sop, (ts,)), answer in zip(batch, result.ac.presentation_contexts):
                self.assertEqual((answer.context_id, answer.result, answer.transfer_syntax),
                                 (cid, 0, ts))
                self.assertEqual(result.contexts[cid].abstract_syntax, sop)
        self.assertEqual(len(contexts), 270)

    def test_unknown_abstract_syntax_gets_3(self) -> None:
        """A SOP class outside the statement is refused with result 3."""
        rq = associate_rq(contexts=((1, UNKNOWN_SOP, (c.IMPLICIT_VR_LITTLE_ENDIAN,)),
                                    (3, CT, (c.IMPLICIT_VR_LITTLE_ENDIAN,))))
        result = negotiate(rq, AcceptorPolicy())
        assert isinstance(result, Accepted)
        answers = {pc.context_id: pc.result for pc in result.ac.presentation_contexts}
        self.assertEqual(answers, {1: 3, 3: 0})
        self.assertEqual(set(result.contexts), {3})

    def test_query_retrieve_allow_list(self) -> None:
        """With a Q/R allow-list, an AE not on it gets its Q/R contexts
        answered 1 (user rejection) and keeps Verification and Storage; an
        AE on it (by title, or as AE@address from that address) gets all."""
        contexts = ((1, c.VERIFICATION_SOP_CLASS, (c.IMPLICIT_VR_LITTLE_ENDIAN,)),
                    (3, CT, (c.IMPLICIT_VR_LITTLE_ENDIAN,)),
                    (5, c.STUDY_ROOT_FIND, (c.IMPLICIT_VR_LITTLE_ENDIAN,)),
                    (7, c.PATIENT_ROOT_GET, (c.IMPLICIT_VR_LITTLE_ENDIAN,)))
        policy = AcceptorPolicy(allowed_query_aes=frozenset({"WS1", "WS2@10.0.0.2"}))
        for calling, address, expected in (
                ("WS1", "10.9.9.9", {1: 0, 3: 0, 5: 0, 7: 0}),
                ("WS2", "10.0.0.2", {1: 0, 3: 0, 5: 0, 7: 0}),
                ("WS2", "10.0.0.3", {1: 0, 3: 0, 5: 1, 7: 1}),
                ("CT1", "10.0.0.2", {1: 0, 3: 0, 5: 1, 7: 1})):
            result = negotiate(associate_rq(calling=calling, contexts=contexts), policy,
                               address)
            assert isinstance(result, Accepted)
            answers = {pc.context_id: pc.result for pc in result.ac.presentation_contexts}
            self.assertEqual(answers, expected, (calling, address))
            self.assertEqual(set(result.contexts), {k for k, v in expected.items() if v == 0})

    def test_query_retrieve_disabled(self) -> None:
        """With Q/R turned off, every Q/R context is answered 3 (abstract
        syntax not supported), whoever asks; Storage still gets 0."""
        contexts = ((1, c.STUDY_ROOT_MOVE, (c.IMPLICIT_VR_LITTLE_ENDIAN,)),
                    (3, CT, (c.IMPLICIT_VR_LITTLE_ENDIAN,)))
        policy = AcceptorPolicy(query_retrieve=False, allowed_query_aes=frozenset({"WS1"}))
        result = negotiate(associate_rq(calling="WS1", contexts=contexts), policy)
        assert isinstance(result, Accepted)
        answers = {pc.context_id: pc.result for pc in result.ac.presentation_contexts}
        self.assertEqual(answers, {1: 3, 3: 0})

    def test_unknown_transfer_syntax_gets_4(self) -> None:
        """A known SOP class with only unsupported transfer syntaxes gets 4."""
        deflate = "1.2.840.10008.1.2.1.99"
        rq = associate_rq(contexts=((1, CT, (deflate, "1.2.840.10008.1.2.4.80")),))
        result = negotiate(rq, AcceptorPolicy())
        assert isinstance(result, Accepted)
        self.assertEqual(result.ac.presentation_contexts[0].result, 4)

    def test_verification_only_implicit(self) -> None:
        """Verification takes Implicit VR Little Endian, as the statement says;
        Explicit VR alone is refused with 4."""
        rq = associate_rq(contexts=((1, c.VERIFICATION_SOP_CLASS,
                                     (c.EXPLICIT_VR_LITTLE_ENDIAN, c.IMPLICIT_VR_LITTLE_ENDIAN)),
                                    (3, c.VERIFICATION_SOP_CLASS,
                                     (c.EXPLICIT_VR_LITTLE_ENDIAN,))))
        result = negotiate(rq, AcceptorPolicy())
        assert isinstance(result, Accepted)
        first, second = result.ac.presentation_contexts
        self.assertEqual((first.result, first.transfer_syntax),
                         (0, c.IMPLICIT_VR_LITTLE_ENDIAN))
        self.assertEqual(second.result, 4)

    def test_sender_order_decides_transfer_syntax(self) -> None:
        """Among several supported syntaxes the sender's first choice wins."""
        rq = associate_rq(contexts=((1, CT, (c.JPEG_2000, c.IMPLICIT_VR_LITTLE_ENDIAN)),))
        result = negotiate(rq, AcceptorPolicy())
        assert isinstance(result, Accepted)
        self.assertEqual(result.contexts[1].transfer_syntax, c.JPEG_2000)


class UserInformationTests(SynchronousTestCase):
    """The A-ASSOCIATE-AC user information (PS3.7 D.3.3)."""

    def test_ac_identifies_us(self) -> None:
        """The AC carries Maximum Length 16384, our Implementation Class UID
        and Version Name, and echoes the AE titles."""
        result = negotiate(associate_rq(calling="MOD1", called="SDCC"), AcceptorPolicy())
        assert isinstance(result, Accepted)
        info = result.ac.user_information
        self.assertEqual(info.max_length, 16384)
        self.assertEqual(info.implementation_class_uid, "1.2.392.100224.1.2002.100.5")
        self.assertEqual(info.implementation_version_name, "SDCC 1.1")
        self.assertEqual((result.ac.calling_ae, result.ac.called_ae), ("MOD1", "SDCC"))
        self.assertEqual(result.ac.application_context, "1.2.840.10008.3.1.1.1")

    def test_async_window_answered_only_when_proposed(self) -> None:
        """A proposed async operations window gets 1/1; none proposed, none sent."""
        proposed = negotiate(associate_rq(async_ops=(0, 0)), AcceptorPolicy())
        silent = negotiate(associate_rq(), AcceptorPolicy())
        assert isinstance(proposed, Accepted) and isinstance(silent, Accepted)
        self.assertEqual(proposed.ac.user_information.async_ops, (1, 1))
        self.assertIsNone(silent.ac.user_information.async_ops)

    def test_configured_max_length(self) -> None:
        """The Maximum Length follows the setting, and 0 is refused."""
        result = negotiate(associate_rq(), AcceptorPolicy(max_pdu_length=65536))
        assert isinstance(result, Accepted)
        self.assertEqual(result.ac.user_information.max_length, 65536)
        self.assertRaises(ValueError, AcceptorPolicy, max_pdu_length=0)

    def test_peer_max_length_recorded(self) -> None:
        """The peer's Maximum Length is kept to size what we send."""
        result = negotiate(associate_rq(max_length=4096), AcceptorPolicy())
        assert isinstance(result, Accepted)
        self.assertEqual(result.peer_max_pdu_length, 4096)


class RejectTests(SynchronousTestCase):
    """Reject triples (PS3.8 9.3.4) as architecture.md lists them."""

    def test_wrong_application_context(self) -> None:
        """The statement's misprinted context name is rejected 1/1/2."""
        result = negotiate(associate_rq(application_context="1.2.840.1008.3.1.1.1"),
                           AcceptorPolicy())
        assert isinstance(result, Rejected)
        self.assertEqual((result.rj.result, result.rj.source, result.rj.reason), (1, 1, 2))

    def test_calling_ae_not_allowed(self) -> None:
        """A calling AE outside the allow-list is rejected 1/1/3."""
        policy = AcceptorPolicy(allowed_calling_aes=frozenset({"CT1"}))
        result = negotiate(associate_rq(calling="INTRUDER"), policy)
        assert isinstance(result, Rejected)
        self.assertEqual(tuple(result.reason[:3]), (1, 1, 3))
        self.assertIsInstance(negotiate(associate_rq(calling="CT1"), policy), Accepted)

    def test_calling_ae_bound_to_address(self) -> None:
        """An AE@address entry admits that AE only from that peer address;
        a plain entry admits it from anywhere."""
        policy = AcceptorPolicy(allowed_calling_aes=frozenset({"CT1@10.0.0.5", "MR1"}))
        self.assertIsInstance(negotiate(associate_rq(calling="CT1"), policy, "10.0.0.5"),
                              Accepted)
        refused = negotiate(associate_rq(calling="CT1"), policy, "10.0.0.6")
        assert isinstance(refused, Rejected)
        self.assertEqual(tuple(refused.reason[:3]), (1, 1, 3))
        self.assertIsInstance(negotiate(associate_rq(calling="MR1"), policy, "192.0.2.1"),
                              Accepted)

    def test_called_ae_checked_when_required(self) -> None:
        """With the called-AE check on, another called AE is rejected 1/1/7."""
        strict = AcceptorPolicy(ae_title="SDCC", require_called_ae=True)
        result = negotiate(associate_rq(called="OTHER"), strict)
        assert isinstance(result, Rejected)
        self.assertEqual(tuple(result.reason[:3]), (1, 1, 7))
        self.assertIsInstance(negotiate(associate_rq(called="OTHER"), AcceptorPolicy()),
                              Accepted)
