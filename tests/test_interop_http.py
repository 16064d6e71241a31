"""The running server's HTTP surface while real DCMTK peers work: /metrics
counters, /readyz, client certificates, JSON logs."""

from __future__ import annotations

import json
import os
import signal
import ssl
import urllib.error
import urllib.request
from typing import Any

from twisted.trial.unittest import TestCase

from . import corpus
from .http_support import fetch, fetch_json, held_storescu, sample, scrape
from .server_support import dcmtk, free_port, in_thread, start_server
from .test_http import Volumes
from .test_interop_tls import make_pki


def data_set_total(samples: list[corpus.Sample]) -> int:
    """The data set bytes storescu sends for these files (no preamble, no meta)."""
    return sum(len(corpus.data_set_bytes(s.path)) for s in samples)


class MetricsWhileStoringTests(TestCase):
    """/metrics parsed with prometheus-client's parser around storescu runs."""

    timeout = 120

    async def test_counters_move_by_what_was_sent(self) -> None:
        """storescu sends the 30-class corpus from an allow-listed AE while
        /metrics is scraped: the association shows as active during the send
        (storescu held with SIGSTOP), then instances stored for that AE,
        the store histogram's count and released associations move by
        exactly what was sent, bytes received by the data sets plus the
        protocol's overhead; a refused AE moves the rejects by its reason
        (1/1/3) and the rejected associations by one, nothing else; no
        patient or study identifier appears in the exposition."""
        http_port = free_port()
        server = await start_server(
            self, server={"allowed_calling_ae_titles": "CT1"},
            http={"listen": f"tcp:{http_port}:interface=127.0.0.1"})
        base = f"http://127.0.0.1:{http_port}"
        samples = corpus.sop_class_corpus(os.path.abspath(self.mktemp()))
        before = await scrape(base)

        proto, process = await held_storescu(self, server.port, "CT1", samples,
                                             server.service.monitor)
        live = await scrape(base)
        self.assertEqual(sample(live, "sdcc_associations_active"), 1)
        self.assertGreater(sample(live, "sdcc_store_duration_seconds_count"), 0)
        self.assertLess(sample(live, "sdcc_instances_stored_total", calling_ae="CT1"),
                        len(samples))   # scraped mid-transfer
        process.signalProcess(signal.SIGCONT)
        self.assertEqual(await proto.ended, 0, proto.output.decode(errors="replace"))
        after = await scrape(base)

        def moved(name: str, **labels: str) -> float:
            return sample(after, name, **labels) - sample(before, name, **labels)
        sent = len(samples)
        self.assertEqual(moved("sdcc_instances_stored_total", calling_ae="CT1"), sent)
        self.assertEqual(moved("sdcc_store_duration_seconds_count"), sent)
        self.assertEqual(moved("sdcc_store_duration_seconds_bucket", le="+Inf"), sent)
        self.assertEqual(moved("sdcc_associations_total", outcome="released"), 1)
        self.assertEqual(sample(after, "sdcc_associations_active"), 0)
        self.assertEqual(sum(v for (name, _), v in after.items()
                             if name == "sdcc_instances_failed_total"), 0)
        payload = data_set_total(samples)
        received = moved("sdcc_bytes_received_total")
        self.assertGreaterEqual(received, payload)
        self.assertLess(received, payload + 4096 * sent + 65536)   # commands, PDU headers, RQ

        out, code = await dcmtk(self, "storescu", "-aet", "EVIL", "-aec", "SDCC",
                                "127.0.0.1", str(server.port), samples[0].path)
        self.assertNotEqual(code, 0, out)
        refused = await scrape(base)
        self.assertEqual(sample(refused, "sdcc_association_rejects_total",
                                reason="1/1/3 calling-AE-title-not-recognized")
                         - sample(after, "sdcc_association_rejects_total",
                                  reason="1/1/3 calling-AE-title-not-recognized"), 1)
        self.assertEqual(sample(refused, "sdcc_associations_total", outcome="rejected")
                         - sample(after, "sdcc_associations_total", outcome="rejected"), 1)
        self.assertEqual(sample(refused, "sdcc_instances_stored_total", calling_ae="CT1"),
                         sample(after, "sdcc_instances_stored_total", calling_ae="CT1"))
        exposition = (await fetch(base + "/metrics"))[1]
        self.assertNotIn(b"EVIL", exposition)           # refused AEs make no label
        for private in (samples[0].patient_name, samples[0].patient_id,
                        samples[0].study_uid, samples[0].sop_instance_uid):
            self.assertNotIn(private.encode(), exposition)   # no patient data

    async def test_api_status_and_readyz_with_real_redis(self) -> None:
        """/readyz is 200 with the listener up and Redis answering, 503 when
        the injected space report says the disk floor is crossed, 200 again
        when it is not, 503 once the DICOM listener stops; /api/status lists
        what storescu stored, without patient names (show_patient_data is off)."""
        volumes = Volumes()
        http_port = free_port()
        server = await start_server(
            self, space_report=volumes,
            http={"listen": f"tcp:{http_port}:interface=127.0.0.1"})
        base = f"http://127.0.0.1:{http_port}"
        samples = corpus.sop_class_corpus(os.path.abspath(self.mktemp()))[:3]
        out, code = await dcmtk(self, "storescu", "-R", "-aet", "MR1", "-aec", "SDCC",
                                "127.0.0.1", str(server.port), *[s.path for s in samples])
        self.assertEqual(code, 0, out)
        code, ready = await fetch_json(base + "/readyz")
        self.assertEqual(code, 200, ready)
        self.assertTrue(ready["checks"]["listener"]["ok"])
        volumes.free["data_dir"] = 10
        code, ready = await fetch_json(base + "/readyz")
        self.assertEqual((code, ready["checks"]["disk"]["below_floor"]), (503, ["data_dir"]))
        volumes.free["data_dir"] = 20 << 30
        self.assertEqual((await fetch(base + "/readyz"))[0], 200)
        code, status = await fetch_json(base + "/api/status")
        self.assertEqual(code, 200)
        self.assertEqual([r["calling_ae"] for r in status["recent"]], ["MR1"] * 3)
        self.assertEqual(status["today"]["per_ae"],
                         [{"calling_ae": "MR1", "stored": 3, "failed": 0,
                           "bytes": sum(r["size"] for r in status["recent"])}])
        self.assertNotIn("Corpus^Patient", json.dumps(status))
        await server.service.getServiceNamed("dicom").stopService()
        code, ready = await fetch_json(base + "/readyz")
        self.assertEqual((code, ready["checks"]["listener"]["ok"]), (503, False))


class AccessTests(TestCase):
    """Bearer token and client certificates on a real listener."""

    timeout = 60

    async def test_bearer_token_over_tcp(self) -> None:
        """With [http] token_file, /metrics over real TCP needs the token;
        /healthz does not."""
        token_file = os.path.abspath(self.mktemp())
        with open(token_file, "w") as handle:
            handle.write("abcdefghijklmnop-token\n")
        http_port = free_port()
        await start_server(self, http={"listen": f"tcp:{http_port}:interface=127.0.0.1",
                                       "token_file": token_file})
        base = f"http://127.0.0.1:{http_port}"
        self.assertEqual((await fetch(base + "/metrics"))[0], 401)
        code, body = await fetch(base + "/metrics",
                                 headers={"Authorization": "Bearer abcdefghijklmnop-token"})
        self.assertEqual(code, 200)
        self.assertIn(b"sdcc_associations_active", body)
        self.assertEqual((await fetch(base + "/healthz"))[0], 200)

    async def test_client_certificates(self) -> None:
        """An ssl: HTTP listener with [tls] ca_certificates serves /metrics to
        a client whose certificate the CA signed, and refuses the handshake
        without a certificate or with one from another CA."""
        pki_dir = os.path.abspath(self.mktemp())
        os.makedirs(pki_dir)
        pki = make_pki(pki_dir)
        http_port = free_port()
        ssl_args = f"privateKey={pki['server.key']}:certKey={pki['server.crt']}"
        await start_server(
            self, server={"listen": f"ssl:0:interface=127.0.0.1:{ssl_args}"},
            tls={"ca_certificates": pki["ca.crt"]},
            http={"listen": f"ssl:{http_port}:interface=127.0.0.1:{ssl_args}"})
        url = f"https://127.0.0.1:{http_port}/metrics"

        def get(client: str | None) -> Any:
            context = ssl.create_default_context(cafile=pki["ca.crt"])
            if client is not None:
                context.load_cert_chain(pki[f"{client}.crt"], pki[f"{client}.key"])
            try:
                with urllib.request.urlopen(url, context=context, timeout=10) as answer:
                    return answer.status, answer.read()
            except (urllib.error.URLError, ssl.SSLError, OSError) as exc:
                return None, repr(exc)
        code, body = await in_thread(get, "client")
        self.assertEqual(code, 200, body)
        self.assertIn(b"sdcc_associations_active", body)
        for client in (None, "rogue"):
            code, why = await in_thread(get, client)
            self.assertIsNone(code, f"{client}: {why!r}")


class JsonLogTests(TestCase):
    """[logging] format = json."""

    timeout = 60

    async def test_one_json_object_per_line(self) -> None:
        """With format = json every line of [logging] file is a JSON object
        with time, level, namespace and message, and the event's fields under
        the issue's names: the association line carries peer and calling_ae,
        the per-instance line sop_instance_uid and status."""
        log_path = os.path.abspath(self.mktemp())
        server = await start_server(self, logging={"file": log_path, "format": "json",
                                                   "level": "debug"})
        one = corpus.sop_class_corpus(os.path.abspath(self.mktemp()))[:1]
        out, code = await dcmtk(self, "storescu", "-R", "-aet", "JSONAE", "-aec", "SDCC",
                                "127.0.0.1", str(server.port), one[0].path)
        self.assertEqual(code, 0, out)
        await server.service.stopService()
        with open(log_path, encoding="utf-8") as handle:
            lines = [json.loads(line) for line in handle]
        self.assertTrue(lines)
        for line in lines:
            self.assertTrue({"time", "level", "namespace", "message"} <= set(line), line)
        ended = [line for line in lines if line["namespace"] == "sdcc.association"
                 and "outcome" in line]
        self.assertEqual(len(ended), 1, lines)
        self.assertEqual((ended[0]["calling_ae"], ended[0]["outcome"], ended[0]["level"]),
                         ("JSONAE", "released", "info"))
        self.assertTrue(ended[0]["peer"].startswith("127.0.0.1:"))
        stored = [line for line in lines if line.get("sop_instance_uid") == one[0].sop_instance_uid]
        self.assertEqual(len(stored), 1, lines)
        self.assertEqual((stored[0]["status"], stored[0]["level"]), (0, "debug"))
        self.assertIn(one[0].sop_instance_uid, stored[0]["message"])
