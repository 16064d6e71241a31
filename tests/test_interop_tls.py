"""DICOM over TLS with client-certificate verification, against DCMTK echoscu."""

from __future__ import annotations

import datetime
import ipaddress
import os

from twisted.trial.unittest import TestCase

from .server_support import dcmtk, in_thread, start_server


def make_pki(directory: str) -> dict[str, str]:
    """Throwaway PKI: a CA, a server and a client signed by it, and a client
    signed by a second, untrusted CA.  Returns name -> PEM path."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    paths: dict[str, str] = {}

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def write(label: str, key: object, cert: x509.Certificate) -> None:
        key_path = os.path.join(directory, f"{label}.key")
        cert_path = os.path.join(directory, f"{label}.crt")
        with open(key_path, "wb") as handle:
            handle.write(key.private_bytes(  # type: ignore[attr-defined]
                serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                serialization.NoEncryption()))
        with open(cert_path, "wb") as handle:
            handle.write(cert.public_bytes(serialization.Encoding.PEM))
        paths[label + ".key"], paths[label + ".crt"] = key_path, cert_path

    def issue(cn: str, issuer_key: object, issuer: x509.Name | None, ca: bool) -> tuple:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (x509.CertificateBuilder().subject_name(name(cn))
                   .issuer_name(issuer or name(cn)).public_key(key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(hours=1))
                   .not_valid_after(now + datetime.timedelta(days=2))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if not ca:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                             x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
        cert = builder.sign(issuer_key or key, hashes.SHA256())
        return key, cert

    ca_key, ca_cert = issue("sdcc test CA", None, None, True)
    write("ca", ca_key, ca_cert)
    for label in ("server", "client"):
        key, cert = issue(f"sdcc test {label}", ca_key, ca_cert.subject, False)
        write(label, key, cert)
    rogue_ca_key, rogue_ca = issue("rogue CA", None, None, True)
    key, cert = issue("rogue client", rogue_ca_key, rogue_ca.subject, False)
    write("rogue", key, cert)
    return paths


class TLSTests(TestCase):
    """An ssl: listener with [tls] ca_certificates."""

    timeout = 120

    async def test_client_certificates(self) -> None:
        """echoscu +tls with a client certificate from the trusted CA verifies;
        without a certificate, or with one from another CA, it cannot even
        associate; a plain TCP echoscu is not answered as DICOM."""
        pki = make_pki(self._pki_dir())
        listen = (f"ssl:0:interface=127.0.0.1:privateKey={pki['server.key']}"
                  f":certKey={pki['server.crt']}")
        server = await start_server(self, server={"listen": listen},
                                    tls={"ca_certificates": pki["ca.crt"]})
        port = str(server.port)
        common = ["-aet", "TLSPEER", "-aec", "SDCC", "+cf", pki["ca.crt"]]
        out, code = await dcmtk(self, "echoscu", "-v", "+tls", pki["client.key"],
                                pki["client.crt"], *common, "127.0.0.1", port)
        self.assertEqual(code, 0, out)
        self.assertIn("Received Echo Response (Success)", out)

        out, code = await dcmtk(self, "echoscu", "+tla", *common, "127.0.0.1", port)
        self.assertNotEqual(code, 0, out)
        out, code = await dcmtk(self, "echoscu", "+tls", pki["rogue.key"], pki["rogue.crt"],
                                *common, "127.0.0.1", port)
        self.assertNotEqual(code, 0, out)
        out, code = await dcmtk(self, "echoscu", "-to", "5", "-ta", "5",
                                "-aet", "PLAIN", "-aec", "SDCC", "127.0.0.1", port)
        self.assertNotEqual(code, 0, out)

    async def test_server_closes_with_close_notify(self) -> None:
        """When the server ends a TLS connection itself (here: the peer stays
        after the A-RELEASE-RP, and ARTIM runs out), it sends a TLS
        close_notify and closes at ARTIM, instead of being cut off a whole
        ARTIM period later without one."""
        import socket
        import ssl
        import time

        from sdcc_twisted.core.pdu import AAssociateAC, AReleaseRP, AReleaseRQ, decode, encode
        from sdcc_twisted.core.framing import PDUFramer

        from .support import associate_rq

        pki = make_pki(self._pki_dir())
        listen = (f"ssl:0:interface=127.0.0.1:privateKey={pki['server.key']}"
                  f":certKey={pki['server.crt']}")
        server = await start_server(self, server={"listen": listen, "artim_timeout": "1"})

        def peer() -> tuple[list[type], float, bytes | str]:
            context = ssl.create_default_context(cafile=pki["ca.crt"])
            context.check_hostname = False
            with socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw:
                with context.wrap_socket(raw, suppress_ragged_eofs=False) as tls:
                    framer = PDUFramer(1 << 20)
                    seen: list[type] = []

                    def read_pdu() -> None:
                        while True:
                            frames = framer.feed(tls.recv(65536))
                            if frames:
                                seen.extend(type(decode(t, b)) for t, b in frames)
                                return

                    tls.sendall(encode(associate_rq(calling="TLSQUIET")))
                    read_pdu()
                    tls.sendall(encode(AReleaseRQ()))
                    read_pdu()
                    released = time.monotonic()
                    try:
                        end: bytes | str = tls.recv(65536)      # b"" after close_notify
                    except (ssl.SSLError, OSError) as exc:
                        end = type(exc).__name__
                    return seen, time.monotonic() - released, end

        seen, waited, end = await in_thread(peer)
        self.assertEqual(seen, [AAssociateAC, AReleaseRP])
        self.assertEqual(end, b"", "no TLS close_notify: the connection was cut")
        self.assertLess(waited, 1.8)

    def _pki_dir(self) -> str:
        path = os.path.abspath(self.mktemp())
        os.makedirs(path)
        return path
