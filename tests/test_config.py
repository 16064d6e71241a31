"""The INI configuration, the twistd plugin and build_service."""

from __future__ import annotations

import os
from typing import Any

from twisted.application import service
from twisted.application.service import IServiceMaker
from twisted.internet.testing import MemoryReactorClock
from twisted.plugin import getPlugins
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from sdcc_twisted import tap
from sdcc_twisted.config import ConfigError, Settings, load_settings, parse_settings
from sdcc_twisted.service import build_service


class _InlinePool:
    """A thread pool that runs the work at once, in the caller's thread."""

    def callInThreadWithCallback(self, on_result: Any, fn: Any, *args: Any) -> None:
        try:
            result = fn(*args)
        except Exception:  # noqa: BLE001 - handed over like a real pool does
            on_result(False, Failure())
        else:
            on_result(True, result)


class ThreadedMemoryReactor(MemoryReactorClock):
    """MemoryReactorClock with the IReactorThreads calls the service makes
    (blocking work: free-space checks, journal batches) run inline."""

    def getThreadPool(self) -> _InlinePool:
        return _InlinePool()

    def callFromThread(self, fn: Any, *args: Any, **kwargs: Any) -> None:
        fn(*args, **kwargs)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class SettingsTests(SynchronousTestCase):
    """Values, defaults and errors that name section and key."""

    def test_shipped_file_is_the_defaults(self) -> None:
        """etc/sdcc.ini parses, and says exactly what the built-in defaults
        say, except data_dir: the repository's var/sdcc (from etc/)."""
        from dataclasses import replace

        shipped = load_settings(os.path.join(REPO, "etc", "sdcc.ini"))
        defaults = parse_settings("", "empty.ini")
        self.assertEqual(shipped.server.data_dir, os.path.join(REPO, "var", "sdcc"))
        self.assertEqual(replace(shipped.server, data_dir=defaults.server.data_dir),
                         defaults.server)
        self.assertEqual(shipped.storage, defaults.storage)
        self.assertEqual(shipped.index, defaults.index)
        self.assertEqual(shipped.query, defaults.query)
        self.assertEqual(shipped.http, defaults.http)
        self.assertEqual(shipped.logging, defaults.logging)
        self.assertEqual(shipped.retrieve, defaults.retrieve)
        self.assertEqual(shipped.studies, defaults.studies)
        self.assertEqual(shipped.hooks, defaults.hooks)
        self.assertEqual(shipped.forward, defaults.forward)
        self.assertEqual(shipped.forward_rules, ())
        self.assertEqual(shipped.http.listen, "tcp:8080:interface=127.0.0.1")
        self.assertEqual(shipped.server.listen, "tcp:11112")
        self.assertEqual(shipped.server.max_pdu_length, 16384)
        self.assertEqual(shipped.index.redis, "embedded")

    def test_defaults_in_one_place(self) -> None:
        """An empty file gives exactly the defaults of the settings classes:
        the parser has no defaults of its own."""
        self.assertEqual(parse_settings("", "empty.ini"), Settings(source="empty.ini"))

    def test_values(self) -> None:
        """Every kind of value is read and converted."""
        settings = parse_settings(
            "[server]\nae_title = ARCHIVE\nlisten = tcp:104:interface=127.0.0.1\n"
            "max_pdu_length = 65536\nrequire_called_ae_title = yes\n"
            "allowed_calling_ae_titles = CT1, MR1\nidle_timeout = 12.5\n"
            "[storage]\nroot = /srv/dicom\nfsync = no\n"
            "[index]\nredis = redis://127.0.0.1:6379/2\ntimeout = 0.5\n"
            "[retrieve]\nmax_decode_bytes = 1000000\n", "x.ini")
        self.assertEqual(settings.retrieve.max_decode_bytes, 1000000)
        self.assertEqual(settings.server.ae_title, "ARCHIVE")
        self.assertEqual(settings.server.max_pdu_length, 65536)
        self.assertTrue(settings.server.require_called_ae_title)
        self.assertEqual(settings.server.allowed_calling_ae_titles, frozenset({"CT1", "MR1"}))
        self.assertEqual(settings.server.idle_timeout, 12.5)
        self.assertEqual(settings.storage_root, "/srv/dicom")
        self.assertFalse(settings.storage.fsync)
        self.assertEqual(settings.index.redis, "redis://127.0.0.1:6379/2")

    def test_errors_name_section_and_key(self) -> None:
        """Each bad value stops with a message naming file, section and key."""
        cases = {
            "[server]\nmax_pdu_length = 0\n": "[server] max_pdu_length",
            "[server]\nmax_pdu_length = big\n": "[server] max_pdu_length",
            "[server]\nae_title = WAY_TOO_LONG_AE_TITLE\n": "[server] ae_title",
            "[server]\nae_title = A\\B\n": "[server] ae_title",
            "[server]\nlisten = 11112\n": "[server] listen",
            "[server]\nidle_timeout = -1\n": "[server] idle_timeout",
            "[server]\nrequire_called_ae_title = maybe\n": "[server] require_called_ae_title",
            "[storage]\nfsync = sometimes\n": "[storage] fsync",
            "[index]\nredis = mysql://x\n": "[index] redis",
            "[index]\nlock = global\n": "[index] lock",
            "[server]\nport = 104\n": "[server] port: unknown key",
            "[serverr]\nae_title = X\n": "[serverr]: unknown section",
            "[query]\nenabled = perhaps\n": "[query] enabled",
            "[query]\nallowed_calling_ae_titles = WS1, @10.0.0.1\n":
                "[query] allowed_calling_ae_titles",
            "[server\n": "bad.ini",
            "[http]\nlisten = 8080\n": "[http] listen",
            "[http]\nshow_patient_data = perhaps\n": "[http] show_patient_data",
            "[http]\nport = 8080\n": "[http] port: unknown key",
            "[logging]\nformat = xml\n": "[logging] format",
            "[retrieve]\nmax_decode_bytes = -1\n": "[retrieve] max_decode_bytes",
            "[studies]\nquiet_seconds = 0.01\n": "[studies] quiet_seconds",
            "[hooks]\non_instance = run {patient_name}\n": "[hooks] on_instance: expected "
                "a command line (no shell) whose {placeholders} are among path,",
            "[hooks]\non_study_complete = run 'open\n": "[hooks] on_study_complete",
            "[hooks]\non_study_complete_url = ftp://x/\n": "[hooks] on_study_complete_url",
            "[hooks]\nmax_running = 0\n": "[hooks] max_running",
            "[forward_rules]\npacs = PACS\n": "[forward_rules] pacs: PACS is not in "
                "[move_destinations]",
            "[move_destinations]\nPACS = h:104\n[forward_rules]\npacs = PACS colour=red\n":
                "[forward_rules] pacs: expected DEST_AE",
            "[move_destinations]\nPACS = h:104\n[studies]\nquiet_seconds = 0\n"
            "[forward_rules]\npacs = PACS per=study\n": "[forward_rules] pacs: per=study needs",
            "[forward]\nmax_attempts = 0\n": "[forward] max_attempts",
            "[studies]\nquiet_seconds = 0\n[hooks]\non_study_complete = x {study_uid}\n":
                "[hooks] on_study_complete: needs [studies] quiet_seconds above 0",
            "[retrieve]\nmax_decode_bytes = lots\n": "[retrieve] max_decode_bytes",
            "[logging]\nformat = json\n": "[logging] format: json needs [logging] file",
        }
        for text, expected in cases.items():
            with self.assertRaises(ConfigError, msg=text) as ctx:
                parse_settings(text, "bad.ini")
            self.assertIn(expected, str(ctx.exception), text)
            self.assertIn("bad.ini", str(ctx.exception))

    def test_hooks_section(self) -> None:
        """[hooks] commands are split like a shell would (no shell runs
        them), keep their placeholders, and a relative program is taken from
        the file's folder; a missing program stops build_service naming the
        key."""
        settings = parse_settings(
            "[studies]\nquiet_seconds = 30\n[hooks]\n"
            "on_instance = bin/index.sh {path} 'two words'\n"
            "on_study_complete = process-study --study {study_uid} {study_folder} {count}\n"
            "on_study_complete_url = https://lab.example/hook\ntimeout = 5\n", "x.ini", "/etc/x")
        self.assertEqual(settings.studies.quiet_seconds, 30)
        self.assertEqual(settings.hooks.on_instance, ("/etc/x/bin/index.sh", "{path}", "two words"))
        self.assertEqual(settings.hooks.on_study_complete, (
            "process-study", "--study", "{study_uid}", "{study_folder}", "{count}"))
        self.assertEqual(settings.hooks.on_study_complete_url, "https://lab.example/hook")
        self.assertEqual(settings.hooks.timeout, 5)
        data_dir = os.path.abspath(self.mktemp())
        missing = parse_settings(f"[server]\ndata_dir = {data_dir}\n[hooks]\n"
                                 "on_instance = /nonexistent/hook {path}\n", "x.ini")
        with self.assertRaises(ConfigError) as ctx:
            build_service(missing, MemoryReactorClock())
        self.assertIn("[hooks] on_instance: '/nonexistent/hook' is not an executable",
                      str(ctx.exception))

    def test_forward_rules(self) -> None:
        """[forward_rules] entries name a destination and filters; a rule
        matches only what every given filter matches."""
        settings = parse_settings(
            "[move_destinations]\nPACS = 10.0.0.20:104\nARCHIVE = 10.0.0.30:11112\n"
            "[forward_rules]\npacs = PACS modality=CT,MR calling=CT1\n"
            "archive = ARCHIVE per=study\n", "x.ini")
        pacs, archive = settings.forward_rules
        self.assertEqual((pacs.destination, pacs.per_study), ("PACS", False))
        self.assertTrue(pacs.matches("CT1", "MR", "1.2.3"))
        self.assertFalse(pacs.matches("CT2", "MR", "1.2.3"))
        self.assertFalse(pacs.matches("CT1", "US", "1.2.3"))
        self.assertTrue(archive.per_study and archive.matches("ANY", "", "1.2"))

    def test_relative_paths_from_the_file(self) -> None:
        """Relative paths in a file are taken from the file's folder, not the
        working directory; absolute ones and a bare program name stay."""
        folder = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(folder, "etc"))
        path = os.path.join(folder, "etc", "x.ini")
        with open(path, "w") as handle:
            handle.write("[server]\ndata_dir = ../data\n[storage]\nroot = /srv/store\n"
                         "[logging]\nfile = log/sdcc.log\n[index]\nredis_server = redis-server\n")
        settings = load_settings(path)
        self.assertEqual(settings.server.data_dir, os.path.join(folder, "data"))
        self.assertEqual(settings.storage_root, "/srv/store")
        self.assertEqual(settings.logging.file, os.path.join(folder, "etc", "log", "sdcc.log"))
        self.assertEqual(settings.index.redis_server, "redis-server")
        with open(path, "w") as handle:
            handle.write("[index]\nredis_server = bin/redis-server\n")
        settings = load_settings(path)
        self.assertEqual(settings.server.data_dir, os.path.join(folder, "etc", "var", "sdcc"))
        self.assertEqual(settings.storage_root,
                         os.path.join(folder, "etc", "var", "sdcc", "store"))
        self.assertEqual(settings.index.redis_server,
                         os.path.join(folder, "etc", "bin", "redis-server"))

    def test_query_section(self) -> None:
        """[query] turns Q/R off or limits it to an allow-list (AE or
        AE@address); by default any admitted AE may query and retrieve."""
        defaults = parse_settings("", "x.ini").query
        self.assertEqual((defaults.enabled, defaults.allowed_calling_ae_titles), (True, None))
        settings = parse_settings("[query]\nenabled = no\n"
                                  "allowed_calling_ae_titles = WS1, WS2@10.0.0.2\n", "x.ini")
        self.assertFalse(settings.query.enabled)
        self.assertEqual(settings.query.allowed_calling_ae_titles,
                         frozenset({"WS1", "WS2@10.0.0.2"}))
    def test_http_listener_is_loopback_unless_protected(self) -> None:
        """[http] listen: loopback (or a unix socket) needs nothing; any other
        address is refused unless a bearer token file or client certificates
        ([tls] ca_certificates on an ssl: listener) protect it; empty is off."""
        for local in ("tcp:8080:interface=127.0.0.1", "tcp:0:interface=127.0.0.2",
                      "tcp6:8080:interface=\\:\\:1", "unix:/run/sdcc/http.sock", ""):
            self.assertEqual(parse_settings(f"[http]\nlisten = {local}\n").http.listen, local)
        for exposed in ("tcp:8080", "tcp:8080:interface=0.0.0.0",
                        "tcp:8080:interface=10.1.2.3", "tcp6:8080:interface=\\:\\:",
                        "ssl:8443:privateKey=k.pem", "tcp:8080:interface=localhost"):
            with self.assertRaises(ConfigError, msg=exposed) as ctx:
                parse_settings(f"[http]\nlisten = {exposed}\n", "x.ini")
            self.assertIn("x.ini: [http] listen", str(ctx.exception))
            self.assertIn("token_file", str(ctx.exception))
        with_token = parse_settings("[http]\nlisten = tcp:8080\ntoken_file = /etc/sdcc/token\n")
        self.assertEqual(with_token.http.token_file, "/etc/sdcc/token")
        with_certificates = parse_settings(
            "[server]\nlisten = ssl:2762:privateKey=k.pem\n"
            "[tls]\nca_certificates = ca.pem\n"
            "[http]\nlisten = ssl:8443:privateKey=k.pem\n")
        self.assertEqual(with_certificates.http.listen, "ssl:8443:privateKey=k.pem")
        with self.assertRaises(ConfigError):
            parse_settings("[server]\nlisten = ssl:2762:privateKey=k.pem\n"
                           "[tls]\nca_certificates = ca.pem\nrequire_client_certificate = no\n"
                           "[http]\nlisten = ssl:8443:privateKey=k.pem\n")

    def test_http_and_json_logging_values(self) -> None:
        """[http] show_patient_data and [logging] format = json (with a file) are read."""
        settings = parse_settings("[http]\nshow_patient_data = yes\n"
                                  "[logging]\nformat = json\nfile = sdcc.jsonl\n")
        self.assertTrue(settings.http.show_patient_data)
        self.assertEqual((settings.logging.format, settings.logging.file),
                         ("json", "sdcc.jsonl"))
        self.assertFalse(parse_settings("").http.show_patient_data)
        self.assertEqual(parse_settings("").logging.format, "text")

    def test_missing_file(self) -> None:
        """A missing file names the path and the reason."""
        with self.assertRaises(ConfigError) as ctx:
            load_settings("/nonexistent/sdcc.ini")
        self.assertIn("/nonexistent/sdcc.ini", str(ctx.exception))


class TapTests(SynchronousTestCase):
    """``twistd sdcc`` options and the service tree."""

    def write(self, text: str) -> str:
        path = self.mktemp()
        with open(path, "w") as handle:
            handle.write(text)
        return path

    def test_plugin_is_discoverable(self) -> None:
        """twistd finds the 'sdcc' plugin, which points at sdcc_twisted.tap."""
        import twisted.plugins
        makers = {m.tapname: m for m in getPlugins(IServiceMaker, twisted.plugins)}
        self.assertIn("sdcc", makers)
        self.assertEqual(makers["sdcc"].module, "sdcc_twisted.tap")

    def test_config_option(self) -> None:
        """--config and -c load the file; a bad file ends the process with one
        line naming the key (SystemExit, not a UsageError after the usage text)."""
        good = self.write("[server]\nae_title = ARCHIVE\n")
        for flag in ("--config", "-c"):
            options = tap.Options()
            options.parseOptions([flag, good])
            self.assertEqual(options["settings"].server.ae_title, "ARCHIVE")
        bad = self.write("[server]\nmax_pdu_length = 0\n")
        options = tap.Options()
        with self.assertRaises(SystemExit) as ctx:
            options.parseOptions(["--config", bad])
        self.assertIn("[server] max_pdu_length", str(ctx.exception))
        self.assertEqual(len(str(ctx.exception).splitlines()), 1)

    def test_build_service_listens_on_endpoint(self) -> None:
        """build_service returns a MultiService that an application can mount;
        started on a memory reactor it listens on the configured endpoint."""
        data_dir = os.path.abspath(self.mktemp())
        options = tap.Options()
        options.parseOptions(["-c", self.write(
            f"[server]\nlisten = tcp:11999:interface=127.0.0.1\ndata_dir = {data_dir}\n"
            "[index]\nredis = redis://127.0.0.1:1/0\n")])
        reactor = ThreadedMemoryReactor()
        top = tap.makeService(options, reactor)
        self.assertIsInstance(top, service.MultiService)
        application = service.Application("host")
        top.setServiceParent(service.IServiceCollection(application))
        top.privilegedStartService()
        top.startService()
        try:
            port, factory, _, interface = reactor.tcpServers[0]
            self.assertEqual((port, interface), (11999, "127.0.0.1"))
            self.assertIs(factory, top.getServiceNamed("sdcc").factory)
            self.assertTrue(os.path.isdir(os.path.join(data_dir, "store")))
        finally:
            top.stopService()

    def test_timeouts_reach_the_server(self) -> None:
        """[server] artim_timeout and idle_timeout govern the associations,
        and artim_timeout also each step of a C-MOVE sub-association."""
        settings = parse_settings(
            f"[server]\nlisten = tcp:0:interface=127.0.0.1\ndata_dir = {self.mktemp()}\n"
            "artim_timeout = 7\nidle_timeout = 70\n"
            "[index]\nredis = redis://127.0.0.1:1/0\n", "x.ini")
        top = build_service(settings, MemoryReactorClock())
        factory = top.factory
        self.assertEqual((factory.timeouts.artim, factory.timeouts.idle), (7.0, 70.0))
        from sdcc_twisted.config import MoveDestination

        factory.open_sub_association(MoveDestination("DEST", "127.0.0.1", 104),
                                     [("1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.2.1")])
        (host, port, _, timeout, _) = factory.reactor.tcpClients[0]
        self.assertEqual((host, port, timeout), ("127.0.0.1", 104, 7.0))

    def test_bad_endpoint(self) -> None:
        """An endpoint string Twisted cannot parse is a ConfigError naming
        [server] listen."""
        settings = parse_settings(f"[server]\nlisten = nosuch:1\ndata_dir = {self.mktemp()}\n"
                                  "[index]\nredis = redis://127.0.0.1:1/0\n", "x.ini")
        with self.assertRaises(ConfigError) as ctx:
            build_service(settings, MemoryReactorClock())
        self.assertIn("[server] listen", str(ctx.exception))


class ListenerServiceTests(TestCase):
    """The DICOM listener service on a real loopback endpoint."""

    async def test_listens_and_stops(self) -> None:
        """when_listening fires with the listening port; stopService stops
        listening, and the port can be bound again."""
        import socket

        from twisted.internet import endpoints, protocol, reactor

        from sdcc_twisted.service import ListenerService

        listener = ListenerService(
            endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"),
            protocol.Factory.forProtocol(protocol.Protocol))
        listener.startService()
        port = await listener.when_listening()
        number = port.getHost().port
        self.assertEqual(port.getHost().host, "127.0.0.1")
        await listener.stopService()
        probe = socket.socket()
        self.addCleanup(probe.close)
        probe.bind(("127.0.0.1", number))

    def test_port_in_use_raises_at_start(self) -> None:
        """A port that is taken makes privilegedStartService raise a
        ConfigError naming the listener and the reason (twistd then exits
        with that one line), not only log it."""
        import socket

        from twisted.internet import endpoints, protocol, reactor

        from sdcc_twisted.service import ListenerService

        busy = socket.socket()
        self.addCleanup(busy.close)
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        listener = ListenerService(
            endpoints.TCP4ServerEndpoint(reactor, busy.getsockname()[1],
                                         interface="127.0.0.1"),
            protocol.Factory.forProtocol(protocol.Protocol), "[server] listen = busy")
        exc = self.assertRaises(ConfigError, listener.privilegedStartService)
        self.assertIn("[server] listen = busy: cannot listen:", str(exc))
        self.assertIn("Address already in use", str(exc))
