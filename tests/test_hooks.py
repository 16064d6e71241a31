"""Hooks after receipt: commands run without a shell (placeholders, timeout,
bounded concurrency, exit status and stderr tail logged) and JSON POSTs
retried with back-off, on real processes and a real HTTP server; and, on a
running server, hooks that sleep, fail and print a lot leave storing alone
while study-complete events reach their hook once per burst."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from twisted.internet import reactor
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import TestCase
from twisted.web import resource, server

from sdcc_twisted.config import HookSettings
from sdcc_twisted.core.records import InstanceRecord
from sdcc_twisted.services.after_receipt import StudyComplete
from sdcc_twisted.services.hooks import STDERR_TAIL, Hooks

from .redis_support import wait_for

RECORD = InstanceRecord("1.2.3.4.5", "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.2.1",
                        "/store/1.2.3/1.2.3.4/1.2.3.4.5.dcm", 100, 0.0, "CT1",
                        {"StudyInstanceUID": "1.2.3", "SeriesInstanceUID": "1.2.3.4"})


def script(directory: str, name: str, body: str) -> str:
    """A Python script file in ``directory``."""
    path = os.path.join(directory, name)
    with open(path, "w") as handle:
        handle.write("import os, sys, time\n" + body)
    return path


class LogCapture:
    """The formatted sdcc.hooks log events of a test."""

    def __init__(self, testcase: TestCase, namespace: str = "sdcc.hooks") -> None:
        self.lines: list[str] = []

        def observe(event: dict[str, Any]) -> None:
            if event.get("log_namespace") == namespace:
                self.lines.append(formatEvent(event))
        globalLogPublisher.addObserver(observe)
        testcase.addCleanup(globalLogPublisher.removeObserver, observe)


class CommandHookTests(TestCase):
    """Commands on the real reactor with real child processes."""

    timeout = 60

    def setUp(self) -> None:
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)
        self.log = LogCapture(self)

    def hooks(self, **settings: Any) -> Hooks:
        hooks = Hooks(HookSettings(**settings), reactor)
        hooks.startService()
        self.addCleanup(hooks.stopService)
        return hooks

    async def test_placeholders_without_a_shell(self) -> None:
        """Each argument gets its placeholders filled, shell characters are
        passed as they are, and a clean exit logs no warning."""
        out = os.path.join(self.directory, "argv.json")
        record = script(self.directory, "record.py",
                        f"open({out!r}, 'w').write(__import__('json').dumps(sys.argv[1:]))\n")
        hooks = self.hooks(on_instance=(sys.executable, record, "{path}", "{sop_instance_uid}",
                                        "{study_uid};{series_uid}", "{calling_ae}",
                                        "{sop_class_uid}", "{study_folder}", "$HOME*"))
        hooks.instance_stored(RECORD)
        await hooks.idle()
        with open(out) as handle:
            self.assertEqual(json.load(handle), [
                RECORD.path, "1.2.3.4.5", "1.2.3;1.2.3.4", "CT1", RECORD.sop_class_uid,
                "/store/1.2.3", "$HOME*"])
        self.assertEqual([line for line in self.log.lines if "failed" in line], [])

    async def test_failure_logs_status_and_stderr_tail(self) -> None:
        """A command that prints megabytes and exits 3 is logged with its
        exit status and only the tail of its stderr."""
        noisy = script(self.directory, "noisy.py",
                       "sys.stdout.write('o' * 3_000_000)\n"
                       "sys.stderr.write('e' * 1_000_000 + 'THE END')\nsys.exit(3)\n")
        hooks = self.hooks(on_study_complete=(sys.executable, noisy, "{study_uid}", "{count}"))
        hooks.study_complete(StudyComplete("1.2.3", 4, "/store/1.2.3"))
        await hooks.idle()
        [line] = [line for line in self.log.lines if "failed" in line]
        self.assertIn("exit status 3", line)
        self.assertIn("THE END", line)
        self.assertLess(len(line), STDERR_TAIL + 300)

    async def test_timeout_kills(self) -> None:
        """A command still running at the timeout is killed and logged."""
        sleeper = script(self.directory, "sleep.py", "time.sleep(60)\n")
        hooks = self.hooks(on_instance=(sys.executable, sleeper), timeout=0.5)
        hooks.instance_stored(RECORD)
        await hooks.idle()
        [line] = [line for line in self.log.lines if "killed" in line]
        self.assertIn("killed after 0.5 s", line)

    async def test_bounded_concurrency(self) -> None:
        """With max_running 2, five commands run two at a time: the others
        wait for a slot; all run in the end."""
        gate = os.path.join(self.directory, "open")
        blocker = script(self.directory, "block.py",
                         f"open(os.path.join({self.directory!r}, 'started-' + sys.argv[1]), 'w')\n"
                         f"while not os.path.exists({gate!r}): time.sleep(0.01)\n")
        hooks = self.hooks(on_instance=(sys.executable, blocker, "{sop_instance_uid}"),
                           max_running=2)
        from dataclasses import replace
        for n in range(5):
            hooks.instance_stored(replace(RECORD, sop_instance_uid=str(n)))

        def started() -> list[str]:
            return [f for f in os.listdir(self.directory) if f.startswith("started-")]
        await wait_for(lambda: len(started()) == 2, 20, "two commands started")
        self.assertEqual(len(hooks.slots["on_instance"].waiting), 3)
        self.assertEqual(len(started()), 2)
        open(gate, "w").close()
        await hooks.idle()
        self.assertEqual(len(started()), 5)

    async def test_stop_kills_running_commands(self) -> None:
        """Stopping the service kills what still runs and drops what waits."""
        sleeper = script(self.directory, "sleep.py", "time.sleep(60)\n")
        hooks = Hooks(HookSettings(on_instance=(sys.executable, sleeper), max_running=1),
                      reactor)
        hooks.startService()
        hooks.instance_stored(RECORD)
        hooks.instance_stored(RECORD)
        await wait_for(lambda: hooks.processes, 10, "the command to start")
        await hooks.stopService()
        self.assertEqual(hooks.processes, set())
        self.assertIn("stopping: 1 hook command(s) killed", self.log.lines)


class Flaky(resource.Resource):
    """Answers 500 to the first ``failures`` POSTs, then 204; keeps bodies."""

    isLeaf = True

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures
        self.bodies: list[dict[str, str]] = []

    def render_POST(self, request: Any) -> bytes:
        self.bodies.append(json.loads(request.content.read()))
        if len(self.bodies) <= self.failures:
            request.setResponseCode(500)
            return b"not yet"
        request.setResponseCode(204)
        return b""


class HttpHookTests(TestCase):
    """JSON POSTs to a real twisted.web server on 127.0.0.1."""

    timeout = 60

    def serve(self, failures: int) -> tuple[Flaky, str]:
        site = Flaky(failures)
        port = reactor.listenTCP(0, server.Site(site), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return site, f"http://127.0.0.1:{port.getHost().port}/hook"

    async def test_retried_until_accepted(self) -> None:
        """Two 500s, then 204: the same JSON document three times, then done."""
        site, url = self.serve(2)
        hooks = Hooks(HookSettings(on_study_complete_url=url, url_first_delay=0.01), reactor)
        hooks.study_complete(StudyComplete("1.2.3", 7, "/store/1.2.3"))
        await hooks.idle()
        expected = {"study_uid": "1.2.3", "study_folder": "/store/1.2.3", "count": "7"}
        self.assertEqual(site.bodies, [expected] * 3)

    async def test_gives_up_after_the_attempts(self) -> None:
        """A URL that keeps failing is tried url_attempts times and logged."""
        log = LogCapture(self)
        site, url = self.serve(100)
        hooks = Hooks(HookSettings(on_instance_url=url, url_attempts=3,
                                   url_first_delay=0.01), reactor)
        hooks.instance_stored(RECORD)
        await hooks.idle()
        self.assertEqual(len(site.bodies), 3)
        self.assertEqual(site.bodies[0]["sop_instance_uid"], "1.2.3.4.5")
        [line] = [line for line in log.lines if "given up" in line]
        self.assertIn("failed 3 times, last: HTTP 500", line)

    async def test_stop_abandons_the_retries(self) -> None:
        """Stopping during the back-off abandons the POST at once."""
        site, url = self.serve(100)
        hooks = Hooks(HookSettings(on_instance_url=url, url_first_delay=600), reactor)
        hooks.startService()
        hooks.instance_stored(RECORD)
        await wait_for(lambda: site.bodies, 10, "the first POST")
        await hooks.stopService()
        self.assertEqual(len(site.bodies), 1)
        self.assertEqual(hooks.pending, set())


class ServerHookTests(TestCase):
    """A running server with hooks that sleep, fail and print a lot, fed by
    DCMTK storescu."""

    timeout = 120

    async def test_hooks_leave_storing_alone_and_studies_complete_once_per_burst(self) -> None:
        """Every C-STORE succeeds while the on_instance commands (which sleep
        after printing a lot) still run, a C-ECHO is answered meanwhile, and
        the study-complete command (which fails) runs once per burst with
        the count of that burst's instances and the study folder."""
        from .server_support import dcmtk, start_server
        from .test_interop_qr import write_study

        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        events = os.path.join(directory, "events.txt")
        sleeper = script(directory, "sleeper.py",
                         "sys.stderr.write('x' * 500_000)\ntime.sleep(60)\n")
        complete = script(directory, "complete.py",
                          f"open({events!r}, 'a').write(' '.join(sys.argv[1:]) + '\\n')\n"
                          "sys.stderr.write('y' * 500_000)\nsys.exit(2)\n")
        log = LogCapture(self)
        server = await start_server(self, studies={"quiet_seconds": "1"}, hooks={
            "on_instance": f"{sys.executable} {sleeper} {{path}}",
            "on_study_complete": f"{sys.executable} {complete} {{study_uid}} {{count}} "
                                 "{study_folder}",
            "timeout": "30", "max_running": "2"})
        hooks = server.service.getServiceNamed("hooks")
        study = "1.2.826.0.1.3680043.8.498.77"
        first = write_study(directory, "P7", "Hook^Test", study, 1, 3, "20240101")
        out, code = await dcmtk(self, "storescu", "-aet", "MODALITY", "-aec", "SDCC",
                                "127.0.0.1", str(server.port), *first)
        self.assertEqual(code, 0, out)
        self.assertTrue(hooks.processes, "the sleeping hooks should still run")
        out, code = await dcmtk(self, "echoscu", "-aet", "ECHO", "-aec", "SDCC",
                                "127.0.0.1", str(server.port))
        self.assertEqual(code, 0, out)

        def lines() -> list[str]:
            if not os.path.exists(events):
                return []
            with open(events) as handle:
                return handle.read().splitlines()
        folder = os.path.join(server.root, study)
        await wait_for(lambda: len(lines()) == 1, 30, "the first study-complete hook")
        self.assertEqual(lines(), [f"{study} 3 {folder}"])
        second = write_study(directory, "P7", "Hook^Test", study, 1, 2, "20240101")
        out, code = await dcmtk(self, "storescu", "-aet", "MODALITY", "-aec", "SDCC",
                                "127.0.0.1", str(server.port), *second)
        self.assertEqual(code, 0, out)
        await wait_for(lambda: len(lines()) == 2, 30, "the second study-complete hook")
        self.assertEqual(lines()[1], f"{study} 2 {folder}")
        def failed() -> list[str]:
            return [line for line in log.lines if line.startswith("hook on_study_complete:")]
        await wait_for(lambda: len(failed()) == 2, 30, "both study hooks' exit")
        self.assertEqual(len(lines()), 2)
        self.assertIn("failed (exit status 2); stderr: yyy", failed()[0])
