"""Hooks after receipt: a command per instance or per complete study, and/or
an HTTP POST of a JSON document.

A command is an argv template (``[hooks] on_instance``,
``on_study_complete``) whose arguments may hold named placeholders such as
``{path}`` or ``{study_folder}``; it runs without a shell through the
reactor's ``spawnProcess``, at most ``max_running`` of each hook at once, killed after
``timeout`` seconds; its exit status and the tail of its stderr are logged.
A URL (``on_instance_url``, ``on_study_complete_url``) gets the same fields
as a JSON object, retried with doubling back-off.  None of it runs on the
store's path: a slow, failing or chatty hook never delays or fails a store.
"""

from __future__ import annotations

import json
import os
from collections import deque
from typing import Any

from twisted.application import service
from twisted.internet import defer, protocol
from twisted.python.failure import Failure
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer

from sdcc_twisted.config import HookSettings
from sdcc_twisted.core.records import InstanceRecord
from sdcc_twisted.logs import get_logger
from sdcc_twisted.services.after_receipt import StudyComplete

log = get_logger("sdcc.hooks")

#: Bytes of a command's stderr kept for the log (the rest is read and dropped).
STDERR_TAIL = 2048
#: Commands waiting for a free slot beyond which new ones are dropped (logged).
MAX_WAITING = 10000


def instance_fields(record: InstanceRecord) -> dict[str, str]:
    """The fields of an instance hook (:data:`~sdcc_twisted.config.INSTANCE_HOOK_FIELDS`)."""
    return {
        "path": record.path, "sop_instance_uid": record.sop_instance_uid,
        "sop_class_uid": record.sop_class_uid, "transfer_syntax": record.transfer_syntax,
        "study_uid": record.attributes.get("StudyInstanceUID", ""),
        "series_uid": record.attributes.get("SeriesInstanceUID", ""),
        "calling_ae": record.calling_ae,
        "study_folder": os.path.dirname(os.path.dirname(record.path)),
    }


def study_fields(event: StudyComplete) -> dict[str, str]:
    """The fields of a study-complete hook (:data:`~sdcc_twisted.config.STUDY_HOOK_FIELDS`)."""
    return {"study_uid": event.study_uid, "study_folder": event.folder,
            "count": str(event.new_instances)}


class _Command(protocol.ProcessProtocol):
    """One hook process: keeps the tail of its stderr, drops its stdout."""

    def __init__(self) -> None:
        self.stderr: deque[bytes] = deque()
        self._kept = 0
        self.ended: defer.Deferred[Any] = defer.Deferred()

    def errReceived(self, data: bytes) -> None:
        """Keep only the last STDERR_TAIL bytes."""
        self.stderr.append(data)
        self._kept += len(data)
        while self._kept - len(self.stderr[0]) >= STDERR_TAIL:
            self._kept -= len(self.stderr.popleft())

    def processEnded(self, reason: Failure) -> None:
        """Fires ``ended`` with the exit code or signal."""
        self.ended.callback(reason.value)

    def tail(self) -> str:
        """The end of what the command wrote to stderr."""
        return b"".join(self.stderr)[-STDERR_TAIL:].decode("utf-8", "replace").strip()


class Hooks(service.Service):
    """Runs the configured hooks (a
    :class:`~sdcc_twisted.services.after_receipt.ReceiptListener`); on stop,
    kills the commands still running and gives up the POSTs.

    Args:
        settings: the hooks.
        reactor: spawns processes, times them out, and carries the HTTP agent.
        agent: a ``twisted.web.client.Agent`` (made from ``reactor`` if None).
    """

    def __init__(self, settings: HookSettings, reactor: Any, agent: Any = None) -> None:
        self.settings = settings
        self.reactor = reactor
        #: per command hook, so slow instance hooks never hold up study hooks
        self.slots = {name: defer.DeferredSemaphore(settings.max_running)
                      for name in ("on_instance", "on_study_complete")}
        self.pending: set[defer.Deferred[Any]] = set()
        self.processes: set[Any] = set()
        self.waits: set[defer.Deferred[Any]] = set()
        self.stopped = False
        if agent is None and (settings.on_instance_url or settings.on_study_complete_url):
            from twisted.web.client import Agent
            agent = Agent(reactor, connectTimeout=min(settings.timeout, 30))
        self.agent = agent

    # -- ReceiptListener -----------------------------------------------------------
    def instance_stored(self, record: InstanceRecord) -> None:
        """Run the instance hooks for ``record`` (in the background)."""
        fields = instance_fields(record)
        if self.settings.on_instance:
            self._track(self.run("on_instance", self.settings.on_instance, fields))
        if self.settings.on_instance_url:
            self._track(self.post("on_instance_url", self.settings.on_instance_url, fields))

    def study_complete(self, event: StudyComplete) -> None:
        """Run the study-complete hooks (in the background)."""
        fields = study_fields(event)
        if self.settings.on_study_complete:
            self._track(self.run("on_study_complete", self.settings.on_study_complete, fields))
        if self.settings.on_study_complete_url:
            self._track(self.post("on_study_complete_url", self.settings.on_study_complete_url,
                                  fields))

    def _track(self, d: "defer.Deferred[Any]") -> None:
        self.pending.add(d)
        d.addBoth(lambda _: self.pending.discard(d))

    def idle(self) -> "defer.Deferred[Any]":
        """Fires when every hook started so far has ended."""
        return defer.DeferredList(list(self.pending))

    def stopService(self) -> "defer.Deferred[Any]":
        """Kill the running commands, drop the waiting ones and the POSTs."""
        super().stopService()
        self.stopped = True
        if self.processes:
            log.warn("stopping: {n} hook command(s) killed", n=len(self.processes))
        for process in list(self.processes):
            _kill(process)
        for d in list(self.waits):
            d.cancel()
        return self.idle()

    async def _wait(self, d: "defer.Deferred[Any]") -> Any:
        """Await ``d``, cancelled by :meth:`stopService`."""
        self.waits.add(d)
        try:
            return await d
        finally:
            self.waits.discard(d)

    # -- commands ------------------------------------------------------------------
    def run(self, name: str, template: tuple[str, ...],
            fields: dict[str, str]) -> "defer.Deferred[None]":
        """Run one command from ``template`` when a slot is free; never fails."""
        slots = self.slots[name]
        if len(slots.waiting) >= MAX_WAITING:
            log.warn("hook {name}: {n} commands already wait; this one is dropped",
                     name=name, n=len(slots.waiting))
            return defer.succeed(None)
        argv = [arg.format_map(fields) for arg in template]
        return slots.run(lambda: defer.Deferred.fromCoroutine(self._run(name, argv)))

    async def _run(self, name: str, argv: list[str]) -> None:
        if self.stopped:
            return
        command = _Command()
        try:
            process = self.reactor.spawnProcess(command, argv[0], argv,
                                                env={"PATH": os.environ.get("PATH", "")})
        except OSError as exc:
            log.warn("hook {name}: cannot run {program}: {why}", name=name,
                     program=argv[0], why=exc)
            return
        self.processes.add(process)
        timer = self.reactor.callLater(self.settings.timeout, _kill, process)
        try:
            result = await command.ended
        finally:
            self.processes.discard(process)
        timed_out = not timer.active()
        if not timed_out:
            timer.cancel()
        code = getattr(result, "exitCode", None)
        if timed_out:
            log.warn("hook {name}: {program} killed after {t:g} s; stderr: {tail}",
                     name=name, program=argv[0], t=self.settings.timeout, tail=command.tail())
        elif code != 0:
            why = (f"exit status {code}" if code is not None
                   else f"signal {getattr(result, 'signal', '?')}")
            log.warn("hook {name}: {program} failed ({why}); stderr: {tail}",
                     name=name, program=argv[0], why=why, tail=command.tail())
        else:
            log.debug("hook {name}: {program} done", name=name, program=argv[0])

    # -- HTTP ----------------------------------------------------------------------
    def post(self, name: str, url: str, fields: dict[str, str]) -> "defer.Deferred[None]":
        """POST ``fields`` as JSON to ``url``, retried with back-off; never fails."""
        return defer.Deferred.fromCoroutine(self._post(name, url, json.dumps(fields).encode()))

    async def _post(self, name: str, url: str, body: bytes) -> None:
        from twisted.web.client import readBody
        from twisted.web.http_headers import Headers

        delay = self.settings.url_first_delay
        why = ""
        for attempt in range(1, self.settings.url_attempts + 1):
            d = self.agent.request(b"POST", url.encode(),
                                   Headers({b"Content-Type": [b"application/json"]}),
                                   _Body(body))
            d.addTimeout(self.settings.timeout, self.reactor)
            try:
                response = await self._wait(d)
                reading = readBody(response)
                reading.addTimeout(self.settings.timeout, self.reactor)
                await self._wait(reading)
                if 200 <= response.code < 300:
                    log.debug("hook {name}: POST {url} answered {code}", name=name, url=url,
                              code=response.code)
                    return
                why = f"HTTP {response.code}"
            except Exception as exc:  # noqa: BLE001 - any failure is retried
                why = f"{type(exc).__name__}: {exc}"
            if self.stopped:
                log.warn("hook {name}: POST {url} abandoned at stop", name=name, url=url)
                return
            if attempt < self.settings.url_attempts:
                try:
                    await self._wait(_sleep(self.reactor, delay))
                except defer.CancelledError:
                    log.warn("hook {name}: POST {url} abandoned at stop", name=name, url=url)
                    return
                delay *= 2
        log.warn("hook {name}: POST {url} failed {n} times, last: {why}; given up",
                 name=name, url=url, n=self.settings.url_attempts, why=why)


def _kill(process: Any) -> None:
    try:
        process.signalProcess("KILL")
    except Exception:  # noqa: BLE001 - it ended meanwhile
        pass


def _sleep(reactor: Any, seconds: float) -> "defer.Deferred[None]":
    from twisted.internet import task
    return task.deferLater(reactor, seconds, lambda: None)


@implementer(IBodyProducer)
class _Body:
    """A small request body, written at once."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.length = len(body)

    def startProducing(self, consumer: Any) -> "defer.Deferred[None]":
        """Write the whole body."""
        consumer.write(self.body)
        return defer.succeed(None)

    def pauseProducing(self) -> None:
        """Nothing left to pause."""

    def resumeProducing(self) -> None:
        """Nothing left to resume."""

    def stopProducing(self) -> None:
        """Nothing left to stop."""
