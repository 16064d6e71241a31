"""Verification against real peers: DCMTK echoscu and pynetdicom, on 127.0.0.1."""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import TestCase

from .server_support import dcmtk, in_thread, start_server

VERIFICATION = "1.2.840.10008.1.1"


def pynetdicom_echo(port: int, calling: str = "PYNETDICOM", hold: Any = None) -> dict:
    """C-ECHO with pynetdicom; report what the A-ASSOCIATE-AC said."""
    from pynetdicom import AE

    ae = AE(ae_title=calling)
    ae.add_requested_context(VERIFICATION)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    assoc = ae.associate("127.0.0.1", port, ae_title="SDCC")
    try:
        if not assoc.is_established:
            return {"established": False}
        status = assoc.send_c_echo()
        result = {
            "established": True,
            "status": status.Status if status else None,
            "max_length": assoc.acceptor.maximum_length,
            "implementation_class_uid": assoc.acceptor.implementation_class_uid,
            "implementation_version_name": assoc.acceptor.implementation_version_name,
        }
        if hold is not None:
            hold(result)
        return result
    finally:
        if assoc.is_established:
            assoc.release()


class EchoscuTests(TestCase):
    """DCMTK echoscu against the running server."""

    timeout = 120

    async def test_echoscu_variants(self) -> None:
        """echoscu verifies with the default PDU, -pdu 4096 and -pdu 131072,
        with 1, 3 and all 38 proposed transfer syntaxes and with 128
        presentation contexts."""
        server = await start_server(self)
        variants = [[], ["-pdu", "4096"], ["-pdu", "131072"], ["-pts", "1"],
                    ["-pts", "3"], ["-pts", "38"], ["-ppc", "128"]]
        for extra in variants:
            out, code = await dcmtk(self, "echoscu", "-v", "-aet", "SOMEAE", "-aec", "SDCC",
                                    *extra, "127.0.0.1", str(server.port))
            self.assertEqual(code, 0, (extra, out))
            self.assertIn("Received Echo Response (Success)", out, extra)

    async def test_ac_values_seen_by_dcmtk(self) -> None:
        """echoscu's debug dump of our A-ASSOCIATE-AC shows Maximum Length
        16384, our Implementation Class UID and Version Name."""
        server = await start_server(self)
        out, code = await dcmtk(self, "echoscu", "-d", "-aet", "SOMEAE", "-aec", "SDCC",
                                "127.0.0.1", str(server.port))
        self.assertEqual(code, 0, out)
        self.assertRegex(out, r"Their Implementation Class UID: +1\.2\.392\.100224\.1\.2002\.100\.5\n")
        self.assertRegex(out, r"Their Implementation Version Name: +SDCC 1\.1\n")
        self.assertRegex(out, r"Their Max PDU Receive Size: +16384\n")

    async def test_wrong_called_ae_rejected(self) -> None:
        """With the called-AE check on, echoscu to another AE title is
        rejected 1/1/7 and echoscu says so."""
        server = await start_server(self, server={"require_called_ae_title": "yes"})
        out, code = await dcmtk(self, "echoscu", "-v", "-aet", "SOMEAE", "-aec", "NOTSDCC",
                                "127.0.0.1", str(server.port))
        self.assertNotEqual(code, 0)
        self.assertIn("Called AE Title Not Recognized", out)

    async def test_calling_ae_not_allowed(self) -> None:
        """A calling AE outside allowed_calling_ae_titles is rejected 1/1/3."""
        server = await start_server(self, server={"allowed_calling_ae_titles": "CT1, MR1"})
        out, code = await dcmtk(self, "echoscu", "-v", "-aet", "INTRUDER", "-aec", "SDCC",
                                "127.0.0.1", str(server.port))
        self.assertNotEqual(code, 0)
        self.assertIn("Calling AE Title Not Recognized", out)
        out, code = await dcmtk(self, "echoscu", "-aet", "CT1", "-aec", "SDCC",
                                "127.0.0.1", str(server.port))
        self.assertEqual(code, 0, out)


class PynetdicomEchoTests(TestCase):
    """pynetdicom as the SCU."""

    timeout = 120

    async def test_pynetdicom_echo_and_ac(self) -> None:
        """pynetdicom's C-ECHO gets 0x0000 and its view of the A-ASSOCIATE-AC
        holds 16384, our Implementation Class UID and Version Name."""
        server = await start_server(self)
        result = await in_thread(pynetdicom_echo, server.port)
        self.assertEqual(result, {
            "established": True, "status": 0, "max_length": 16384,
            "implementation_class_uid": "1.2.392.100224.1.2002.100.5",
            "implementation_version_name": "SDCC 1.1"})

    async def test_one_association_per_calling_ae(self) -> None:
        """While pynetdicom holds an association as HOLDER, echoscu as HOLDER
        is rejected 2/3/2, echoscu as OTHER is accepted at the same time, and
        HOLDER is accepted again right after the first association ends."""
        import threading

        server = await start_server(self)
        inside = threading.Event()
        proceed = threading.Event()

        def hold(_: dict) -> None:
            inside.set()
            proceed.wait(30)

        held = in_thread(pynetdicom_echo, server.port, "HOLDER", hold)
        await in_thread(inside.wait, 30)
        try:
            out, code = await dcmtk(self, "echoscu", "-v", "-aet", "HOLDER", "-aec", "SDCC",
                                    "127.0.0.1", str(server.port))
            self.assertNotEqual(code, 0)
            self.assertIn("Rejected Transient", out)
            self.assertIn("Local Limit Exceeded", out)
            out, code = await dcmtk(self, "echoscu", "-aet", "OTHER", "-aec", "SDCC",
                                    "127.0.0.1", str(server.port))
            self.assertEqual(code, 0, out)
        finally:
            proceed.set()
        result = await held
        self.assertEqual(result["status"], 0)
        out, code = await dcmtk(self, "echoscu", "-aet", "HOLDER", "-aec", "SDCC",
                                "127.0.0.1", str(server.port))
        self.assertEqual(code, 0, out)
