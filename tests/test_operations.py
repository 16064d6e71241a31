"""Operations with a real ``twistd sdcc``: log reopening for logrotate."""

from __future__ import annotations

import os
import signal
import time

from twisted.trial.unittest import TestCase

from .redis_support import wait_for
from .support import CT
from .server_support import TwistdServer, free_port, in_thread, ini_text
from .test_interop_echo import pynetdicom_echo


def read(path: str) -> str:
    """A file's text, or "" if it does not exist."""
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except FileNotFoundError:
        return ""


class LogReopenTests(TestCase):
    """``[logging] file`` and SIGHUP."""

    timeout = 120

    async def test_sighup_reopens_the_log_file(self) -> None:
        """After logrotate moves the log file away, SIGHUP makes the server
        write to a new file at the configured path; the moved file gets
        nothing more, and the server keeps serving."""
        base = os.path.abspath(self.mktemp())
        os.makedirs(base)
        log_path = os.path.join(base, "sdcc.log")
        port = free_port()
        ini = os.path.join(base, "sdcc.ini")
        with open(ini, "w") as handle:
            handle.write(ini_text(os.path.join(base, "data"), "embedded", port=port,
                                  logging={"file": log_path}))
        server = TwistdServer(self, ini)
        server.start(port)
        await wait_for(lambda: "ready at" in read(log_path), 30, "the first log lines")
        rotated = log_path + ".1"
        os.rename(log_path, rotated)
        os.kill(server.process.pid, signal.SIGHUP)
        await wait_for(lambda: "reopened the log file" in read(log_path), 30,
                       "the log file to be reopened")
        before = read(rotated)
        self.assertEqual((await in_thread(pynetdicom_echo, port))["status"], 0)
        await wait_for(lambda: "outcome=released" in read(log_path), 30,
                       "the association line in the new file")
        self.assertEqual(read(rotated), before)
        self.assertNotIn("outcome=released", before)
        self.assertIsNone(server.process.poll())


class SystemdUnitTests(TestCase):
    """``etc/sdcc.service``."""

    def test_unit(self) -> None:
        """The unit runs twistd in the foreground as a simple service under a
        dedicated user, restarts on failure, and systemd-analyze finds
        nothing wrong with it (its twistd path swapped for one that exists)."""
        import configparser
        import shutil
        import subprocess
        import sys

        from .server_support import REPO

        path = os.path.join(REPO, "etc", "sdcc.service")
        unit = configparser.ConfigParser(interpolation=None, strict=False)
        unit.optionxform = str  # type: ignore[assignment,method-assign]
        unit.read(path)
        service = unit["Service"]
        self.assertEqual(service["Type"], "simple")
        self.assertRegex(service["ExecStart"], r"/twistd -n .*sdcc --config ")
        self.assertEqual(service["Restart"], "on-failure")
        self.assertNotIn(service["User"], ("", "root"))
        analyze = shutil.which("systemd-analyze")
        if analyze is None:
            return
        copy = os.path.abspath(self.mktemp()) + ".service"
        with open(path) as source, open(copy, "w") as target:
            target.write(source.read().replace("/opt/sdcc/bin/twistd", sys.executable))
        checked = subprocess.run([analyze, "verify", copy], capture_output=True, text=True,
                                 timeout=60)
        self.assertEqual(checked.stderr.strip(), "", checked.stderr)


class RetentionTests(TestCase):
    """``[storage] retention_days`` on a running server."""

    timeout = 120

    async def test_oldest_studies_go(self) -> None:
        """A pass deletes, oldest first, every study that received nothing
        for retention_days (files, folders, index entries), with a log line
        per study; a recent study stays whole."""
        from twisted.logger import formatEvent, globalLogPublisher

        from sdcc_twisted.core import conformance as c
        from sdcc_twisted.core.index_keys import KeyLayout

        from . import corpus
        from .server_support import start_server
        from .test_interop_store import pynetdicom_store

        server = await start_server(self, storage={"retention_days": "2"})
        source = os.path.abspath(self.mktemp())
        studies = {name: corpus.new_uid() for name in ("oldest", "older", "recent")}
        paths = {name: [corpus.write_small(os.path.join(source, name, f"{n}.dcm"),
                                           CT, study=uid).path for n in range(2)]
                 for name, uid in studies.items()}
        every = [p for name in paths for p in paths[name]]
        stored = await in_thread(pynetdicom_store, server.port, every,
                                 [(CT, [c.EXPLICIT_VR_LITTLE_ENDIAN])])
        self.assertEqual([s for s, _ in stored["statuses"]], [0] * len(every))
        now = time.time()
        for name, days_ago in (("oldest", 5), ("older", 3)):
            study_dir = os.path.join(server.root, studies[name])
            for directory in [study_dir] + [os.path.join(study_dir, d)
                                            for d in os.listdir(study_dir)]:
                os.utime(directory, (now - days_ago * 86400,) * 2)
        lines: list[str] = []

        def observe(event: dict) -> None:
            if event.get("log_namespace") == "sdcc.retention":
                lines.append(formatEvent(event))
        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)

        removed = await server.service.getServiceNamed("retention").run_now()
        self.assertEqual(removed, 2)
        self.assertEqual(len(lines), 2, lines)
        self.assertIn(f"deleted study {studies['oldest']}", lines[0])
        self.assertIn(f"deleted study {studies['older']}", lines[1])
        self.assertIn("2 instance(s)", lines[0])
        client = server.redis.client()
        layout = KeyLayout("sdcc:")
        self.assertEqual(sorted(os.listdir(server.root)), sorted([".tmp", studies["recent"]]))
        for name in ("oldest", "older"):
            self.assertFalse(client.exists(layout.study(studies[name])))
        self.assertTrue(client.exists(layout.study(studies["recent"])))
        self.assertEqual(client.scard(layout.study_series(studies["recent"])), 2)
