"""The INI configuration, the twistd plugin and build_service."""

from __future__ import annotations

import os
from typing import Any

from twisted.application import service
from twisted.application.service import IServiceMaker
from twisted.internet.testing import MemoryReactorClock
from twisted.plugin import getPlugins
from twisted.python import usage
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from sdcc_twisted import tap
from sdcc_twisted.config import ConfigError, load_settings, parse_settings
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
        """etc/sdcc.ini parses, and says exactly what the built-in defaults say."""
        shipped = load_settings(os.path.join(REPO, "etc", "sdcc.ini"))
        defaults = parse_settings("", "empty.ini")
        self.assertEqual(shipped.server, defaults.server)
        self.assertEqual(shipped.storage, defaults.storage)
        self.assertEqual(shipped.index, defaults.index)
        self.assertEqual(shipped.server.listen, "tcp:11112")
        self.assertEqual(shipped.server.max_pdu_length, 16384)
        self.assertEqual(shipped.index.redis, "embedded")

    def test_values(self) -> None:
        """Every kind of value is read and converted."""
        settings = parse_settings(
            "[server]\nae_title = ARCHIVE\nlisten = tcp:104:interface=127.0.0.1\n"
            "max_pdu_length = 65536\nrequire_called_ae_title = yes\n"
            "allowed_calling_ae_titles = CT1, MR1\nidle_timeout = 12.5\n"
            "[storage]\nroot = /srv/dicom\nfsync = no\n"
            "[index]\nredis = redis://127.0.0.1:6379/2\ntimeout = 0.5\n", "x.ini")
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
            "[server\n": "bad.ini",
        }
        for text, expected in cases.items():
            with self.assertRaises(ConfigError, msg=text) as ctx:
                parse_settings(text, "bad.ini")
            self.assertIn(expected, str(ctx.exception), text)
            self.assertIn("bad.ini", str(ctx.exception))

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
        """--config and -c load the file; a bad file is a UsageError naming the key."""
        good = self.write("[server]\nae_title = ARCHIVE\n")
        for flag in ("--config", "-c"):
            options = tap.Options()
            options.parseOptions([flag, good])
            self.assertEqual(options["settings"].server.ae_title, "ARCHIVE")
        bad = self.write("[server]\nmax_pdu_length = 0\n")
        options = tap.Options()
        with self.assertRaises(usage.UsageError) as ctx:
            options.parseOptions(["--config", bad])
        self.assertIn("[server] max_pdu_length", str(ctx.exception))

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
            self.assertIs(factory, top.factory)
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
        self.assertEqual(factory.query_retrieve.timeout, 7.0)

    def test_bad_endpoint(self) -> None:
        """An endpoint string Twisted cannot parse is a ConfigError naming
        [server] listen."""
        settings = parse_settings(f"[server]\nlisten = nosuch:1\ndata_dir = {self.mktemp()}\n"
                                  "[index]\nredis = redis://127.0.0.1:1/0\n", "x.ini")
        with self.assertRaises(ConfigError) as ctx:
            build_service(settings, MemoryReactorClock())
        self.assertIn("[server] listen", str(ctx.exception))
