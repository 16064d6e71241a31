"""``sdcc-admin``: rebuild, list and show the Redis index, delete studies
and series (synchronous, redis-py).

    sdcc-admin --config etc/sdcc.ini rebuild
    sdcc-admin --redis unix:///var/lib/sdcc/redis.sock --root /srv/store list
    sdcc-admin --config etc/sdcc.ini show 1.2.840.99.1
    sdcc-admin --config etc/sdcc.ini delete study 1.2.840.99
    sdcc-admin --config etc/sdcc.ini quarantine [--retry [NAME ...]]

``rebuild`` reads every ``*.dcm`` under the storage root (header only) and
writes the index anew with the same mapping as the server
(:mod:`sdcc_twisted.core.index_keys`), after deleting every key under the prefix
except the association locks.  Stores that arrive while it runs may be lost
from the index (not from disk); run it when the server is idle.

From ``--config`` it takes ``[storage] root``, ``[index] redis``,
``[index] key_prefix`` and ``[server] data_dir`` (relative paths from the
file's folder, as the server); ``--redis``, ``--root`` and
``--key-prefix`` override them.  ``redis = embedded`` means the Redis that a
running server keeps on ``{data_dir}/redis.sock`` (or wherever
``{data_dir}/redis.url`` says).

``quarantine`` lists the pending journal entries the server set aside because
they kept failing (``{data_dir}/pending/quarantine/``); ``--retry`` moves them
(all, or the named ones) back into the journal, and the running server indexes
them at its next replay round.  It needs no Redis.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

from sdcc_twisted.config import ConfigError, IndexSettings, Settings, load_settings
from sdcc_twisted.core.index_keys import (
    NO_ID,
    KeyLayout,
    Placement,
    detach_probes,
    others_from_counts,
    plan_record,
    record_commands,
)
from sdcc_twisted.core.records import INDEX_ATTRIBUTES, InstanceRecord
from sdcc_twisted.logs import iso_time
from sdcc_twisted.storage.deletion import delete_series, delete_study
from sdcc_twisted.storage.nodes import NodePaths

EXIT_OK = 0
EXIT_NOT_FOUND = 1
EXIT_USAGE = 2

#: Records written per MULTI/EXEC during a rebuild.
BATCH = 200

_KEYWORDS = tuple(kw for attrs in INDEX_ATTRIBUTES.values() for _, kw in attrs)


class AdminError(Exception):
    """A problem the user has to fix; the message says how."""


@dataclass
class Target:
    """Where the index is and what it covers."""

    redis_url: str
    root: str | None
    key_prefix: str


def embedded_url(data_dir: str) -> str:
    """The URL of the embedded Redis of a running server on ``data_dir``."""
    pointer = os.path.join(data_dir, "redis.url")
    try:
        with open(pointer, encoding="utf-8") as handle:
            url = handle.read().strip()
    except OSError:
        url = ""
    socket_path = (url[len("unix://"):].split("?")[0] if url.startswith("unix://")
                   else os.path.join(data_dir, "redis.sock"))
    if not os.path.exists(socket_path):
        raise AdminError(
            f"the embedded Redis of data_dir {data_dir} is not running (no "
            f"socket at {socket_path}). Start the server (twistd sdcc "
            "--config FILE) first, or pass --redis URL.")
    return url or "unix://" + socket_path


def resolve_target(args: argparse.Namespace) -> Target:
    """Combine ``--config`` with the command-line overrides."""
    redis_url = args.redis
    root = args.root
    prefix = args.key_prefix
    if args.config:
        try:
            settings = load_settings(args.config)   # the server's own parser
        except ConfigError as exc:
            raise AdminError(str(exc)) from None
        if root is None:
            root = settings.storage_root
        if prefix is None:
            prefix = settings.index.key_prefix
        if redis_url is None:
            redis_url = (embedded_url(settings.server.data_dir)
                         if settings.index.redis == "embedded" else settings.index.redis)
    if redis_url is None:
        raise AdminError("say where the index is: --config FILE or --redis URL")
    return Target(redis_url, root, IndexSettings.key_prefix if prefix is None else prefix)


def connect(url: str, timeout: float) -> Any:
    """A redis-py client for ``url`` that answered PING."""
    import redis

    try:
        client = redis.Redis.from_url(url, decode_responses=True,
                                      socket_timeout=timeout,
                                      socket_connect_timeout=timeout)
        client.ping()
    except ValueError as exc:
        raise AdminError(f"bad Redis URL {url!r}: {exc}") from None
    except redis.exceptions.RedisError as exc:
        raise AdminError(f"cannot reach Redis at {url}: {exc}") from None
    return client


# -- rebuild ---------------------------------------------------------------

def _text(value: Any) -> str:
    """An element value as the index stores it."""
    if value is None:
        return ""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return "\\".join(_text(v) for v in value)
    original = getattr(value, "original_string", None)
    if isinstance(original, str):
        return original.strip()
    if isinstance(value, bytes):
        return value.decode("ascii", "replace").strip(" \x00")
    return str(value)


def read_record(path: str) -> InstanceRecord:
    """The :class:`InstanceRecord` of a stored Part 10 file (header only)."""
    from pydicom import dcmread

    ds = dcmread(path, stop_before_pixels=True)
    meta = getattr(ds, "file_meta", None) or {}
    sop = _text(meta.get("MediaStorageSOPInstanceUID")) or _text(
        ds.get("SOPInstanceUID"))
    if not sop:
        raise ValueError("no SOP Instance UID")
    sop_class = _text(meta.get("MediaStorageSOPClassUID")) or _text(
        ds.get("SOPClassUID"))
    syntax = _text(meta.get("TransferSyntaxUID"))
    calling_ae = _text(meta.get("SourceApplicationEntityTitle")).strip()
    attributes = {kw: _text(ds[kw].value) for kw in _KEYWORDS if kw in ds}
    st = os.stat(path)
    return InstanceRecord(sop_instance_uid=sop, sop_class_uid=sop_class,
                          transfer_syntax=syntax, path=os.path.abspath(path),
                          size=st.st_size, received_at=st.st_mtime,
                          calling_ae=calling_ae, attributes=attributes)


def dicom_files(root: str) -> Iterator[str]:
    """Every ``*.dcm`` under ``root``, in a stable order."""
    for directory, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            if name.lower().endswith(".dcm") and not name.startswith("."):
                yield os.path.join(directory, name)


def record_sync(client: Any, layout: KeyLayout, rec: InstanceRecord) -> str | None:
    """What :meth:`RedisIndex.record` does, with redis-py."""
    import redis

    key = layout.instance(rec.sop_instance_uid)
    with client.pipeline() as pipe:
        while True:
            try:
                pipe.watch(key)
                old = pipe.hgetall(key)
                probes = (detach_probes(layout, rec.sop_instance_uid,
                                        Placement.of_fields(old),
                                        Placement.of_record(rec)) if old else [])
                if probes:
                    pipe.watch(*[k for k, _ in probes])
                counts = [(pipe.scard(k), pipe.sismember(k, m)) for k, m in probes]
                cmds, previous = plan_record(layout, rec, old,
                                             others_from_counts(probes, counts))
                pipe.multi()
                for cmd in cmds:
                    pipe.execute_command(*cmd)
                pipe.execute()
                return previous
            except redis.WatchError:
                continue


def delete_index(client: Any, layout: KeyLayout) -> int:
    """Delete every key under the prefix except the locks; how many."""
    deleted = 0
    batch: list[str] = []
    for key in client.scan_iter(match=layout.all_keys_pattern(), count=1000):
        if layout.is_lock(key):
            continue
        batch.append(key)
        if len(batch) >= 1000:
            deleted += client.unlink(*batch)
            batch = []
    if batch:
        deleted += client.unlink(*batch)
    return deleted


class Progress:
    """``\\r[####    ] 120/500`` on a stream."""

    def __init__(self, total: int, stream: TextIO, width: int = 30) -> None:
        self.total = total
        self.stream = stream
        self.width = width
        self._last = -1.0

    def update(self, done: int) -> None:
        now = time.monotonic()
        if done < self.total and now - self._last < 0.1:
            return
        self._last = now
        filled = self.width * done // self.total if self.total else self.width
        bar = "#" * filled + " " * (self.width - filled)
        self.stream.write(f"\r[{bar}] {done}/{self.total}")
        self.stream.flush()

    def finish(self) -> None:
        self.update(self.total)
        self.stream.write("\n")
        self.stream.flush()


@dataclass
class RebuildSummary:
    """What a rebuild did."""

    files: int = 0
    indexed: int = 0
    duplicates: int = 0
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    deleted_keys: int = 0


def rebuild(client: Any, layout: KeyLayout, root: str,
            progress: TextIO) -> RebuildSummary:
    """Delete the index and write it again from the files under ``root``."""
    if not os.path.isdir(root):
        raise AdminError(f"the storage root {root} is not a directory")
    paths = list(dicom_files(root))
    summary = RebuildSummary(files=len(paths))
    summary.deleted_keys = delete_index(client, layout)
    seen: dict[str, float] = {}
    bar = Progress(len(paths), progress)
    pipe = client.pipeline(transaction=True)
    queued = 0
    for done, path in enumerate(paths, 1):
        try:
            rec = read_record(path)
        except Exception as exc:  # anything pydicom or the OS may raise
            summary.unreadable.append((path, str(exc) or type(exc).__name__))
            bar.update(done)
            continue
        uid = rec.sop_instance_uid
        if uid in seen:
            summary.duplicates += 1
            if rec.received_at > seen[uid]:
                pipe.execute()
                queued = 0
                record_sync(client, layout, rec)
                seen[uid] = rec.received_at
        else:
            seen[uid] = rec.received_at
            for cmd in record_commands(layout, rec):
                pipe.execute_command(*cmd)
            queued += 1
            summary.indexed += 1
            if queued >= BATCH:
                pipe.execute()
                queued = 0
        bar.update(done)
    pipe.execute()
    bar.finish()
    return summary


# -- list and show -----------------------------------------------------------

def _shown(key_id: str) -> str:
    return "(none)" if key_id == NO_ID else key_id


def _about(fields: dict[str, str], *names: str) -> str:
    parts = [fields[n] for n in names if fields.get(n)]
    return ("  " + "  ".join(parts)) if parts else ""


def list_index(client: Any, layout: KeyLayout, out: TextIO) -> int:
    """Print patients -> studies -> series with instance counts."""
    totals = [0, 0, 0, 0]
    for pid in sorted(client.smembers(layout.patients())):
        totals[0] += 1
        patient = client.hgetall(layout.patient(pid))
        out.write(f"Patient {_shown(pid)}{_about(patient, 'PatientName')}\n")
        for study_uid in sorted(client.smembers(layout.patient_studies(pid))):
            totals[1] += 1
            study = client.hgetall(layout.study(study_uid))
            out.write(f"  Study {_shown(study_uid)}"
                      f"{_about(study, 'StudyDate', 'StudyDescription')}\n")
            for series_uid in sorted(client.smembers(layout.study_series(study_uid))):
                totals[2] += 1
                series = client.hgetall(layout.series(series_uid))
                count = client.scard(layout.series_instances(series_uid))
                totals[3] += count
                out.write(f"    Series {_shown(series_uid)}"
                          f"{_about(series, 'Modality', 'SeriesDescription')}"
                          f"  ({count} instance{'' if count == 1 else 's'})\n")
    if not totals[0]:
        out.write(f"The index under prefix {layout.prefix!r} is empty.\n")
    else:
        out.write("{} patients, {} studies, {} series, {} instances\n"
                  .format(*totals))
    return EXIT_OK


#: Index fields that hold a time as seconds since the epoch.
_EPOCH_FIELDS = frozenset({"received_at"})


def _write_hash(out: TextIO, fields: dict[str, str]) -> None:
    width = max((len(k) for k in fields), default=0)
    for name in sorted(fields):
        value = fields[name]
        if name in _EPOCH_FIELDS:
            try:
                value = iso_time(float(value))
            except (ValueError, OverflowError, OSError):
                pass
        out.write(f"    {name:<{width}}  {value}\n")


def show(client: Any, layout: KeyLayout, uid: str, out: TextIO,
         err: TextIO) -> int:
    """Print what the index holds for a patient id, study, series or SOP UID."""
    found = False
    kinds = (
        ("Instance", layout.instance(uid), None, None),
        ("Series", layout.series(uid), layout.series_instances(uid), "instances"),
        ("Study", layout.study(uid), layout.study_series(uid), "series"),
        ("Patient", layout.patient(uid), layout.patient_studies(uid), "studies"),
    )
    for kind, key, children_key, children in kinds:
        fields = client.hgetall(key)
        if not fields:
            continue
        found = True
        out.write(f"{kind} {uid}  ({key})\n")
        _write_hash(out, fields)
        if children_key is not None:
            members = sorted(client.smembers(children_key))
            out.write(f"  {len(members)} {children}:\n")
            for member in members:
                out.write(f"    {_shown(member)}\n")
    if not found:
        err.write(f"No patient, study, series or instance {uid!r} in the "
                  f"index (prefix {layout.prefix!r}).\n")
        return EXIT_NOT_FOUND
    return EXIT_OK


def delete(client: Any, layout: KeyLayout, level: str, uid: str, root: str,
           out: TextIO, err: TextIO) -> int:
    """Delete a study or a series: files and index entries."""
    exists = client.exists(layout.study(uid) if level == "study" else layout.series(uid))
    if not exists:
        err.write(f"No {level} {uid!r} in the index (prefix {layout.prefix!r}).\n")
        return EXIT_NOT_FOUND
    deleter = delete_study if level == "study" else delete_series
    done = deleter(client, layout, uid, root)
    out.write(f"Deleted {level} {uid}: {done.instances} instance(s), their files and "
              f"index entries")
    if done.missing_files:
        out.write(f" ({done.missing_files} file(s) were already gone)")
    if done.kept:
        out.write(f"; kept {done.kept} stored again while deleting")
    out.write(".\n")
    return EXIT_OK
# -- quarantine ------------------------------------------------------------------

def quarantine(node_dir: str, retry: list[str] | None, out: TextIO, err: TextIO) -> int:
    """List the quarantined journal entries of the node whose folder is
    ``node_dir`` (``{data_dir}/nodes/{node_id}``), or move them back
    (``retry``: the names, empty for all)."""
    from sdcc_twisted.storage.journal import PendingJournal

    journal = PendingJournal.in_data_dir(node_dir)
    entries = journal.quarantined()
    if retry is None:
        for name, rec, present in entries:
            if isinstance(rec, Exception):
                out.write(f"{name}  unreadable: {rec}\n")
            else:
                state = "" if present else "  (file gone)"
                out.write(f"{name}  {rec.sop_instance_uid}  {rec.path}{state}\n")
        out.write(f"{len(entries)} quarantined entries in {journal.quarantine_dir}\n")
        return EXIT_OK
    names = retry or [name for name, _, _ in entries]
    status = EXIT_OK
    for name in names:
        try:
            journal.retry(name)
        except OSError as exc:
            err.write(f"sdcc-admin: cannot retry {name}: {exc.strerror or exc}\n")
            status = EXIT_NOT_FOUND
            continue
        out.write(f"{name} back in {journal.directory}\n")
    return status


# -- command line --------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sdcc-admin", description="Maintain the sdcc Redis index.")
    parser.add_argument("--config", metavar="FILE",
                        help="the server's INI file ([storage] root, [index] "
                             "redis and key_prefix, [server] data_dir)")
    parser.add_argument("--redis", metavar="URL",
                        help="redis://host:port/db or unix:///path?db=N "
                             "(overrides [index] redis)")
    parser.add_argument("--root", metavar="DIR",
                        help="the storage root (overrides [storage] root)")
    parser.add_argument("--key-prefix", metavar="PREFIX",
                        help="key prefix (overrides [index] key_prefix; "
                             "default sdcc:)")
    parser.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS",
                        help="Redis socket timeout (default 10)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("rebuild", help="rebuild the whole index from the files")
    sub.add_parser("list", help="patients, studies and series, as a tree")
    show_cmd = sub.add_parser("show", help="what the index holds for an id")
    show_cmd.add_argument("uid", help="a patient id, study, series or SOP "
                                      "instance UID")
    delete_cmd = sub.add_parser("delete", help="delete a study or a series: its "
                                               "files and index entries")
    delete_cmd.add_argument("level", choices=("study", "series"))
    delete_cmd.add_argument("uid", help="the Study or Series Instance UID")
    quarantine_cmd = sub.add_parser(
        "quarantine", help="journal entries set aside after failing (no Redis needed)")
    quarantine_cmd.add_argument("--retry", nargs="*", metavar="NAME",
                                help="move these entries (default: all) back "
                                     "into the journal")
    quarantine_cmd.add_argument("--node-dir", metavar="DIR",
                                help="the node's folder, {data_dir}/nodes/{node_id} "
                                     "(default: from --config)")
    forward_cmd = sub.add_parser("forward", help="the forwarding queues (needs --config): "
                                                 "list them, show parked items, retry them")
    forward_cmd.add_argument("action", nargs="?", default="list",
                             choices=("list", "parked", "retry"))
    forward_cmd.add_argument("destination", nargs="?",
                             help="one destination AE (default: every one in the rules)")
    return parser


def node_paths(settings: Settings) -> NodePaths:
    """The folders of the configured node (``[server] node_id``, by default
    this host's name: run sdcc-admin on the node's host)."""
    return NodePaths.for_node(settings.server.data_dir, settings.storage_root,
                              settings.server.node_id)


def forward_admin(args: argparse.Namespace, out: TextIO) -> int:
    """``sdcc-admin forward [list|parked|retry] [DEST]``: the node's disk
    queues, ``{data_dir}/nodes/{node_id}/forward`` (the server picks retried
    items up at its next check)."""
    from sdcc_twisted.storage.forward_queue import ForwardQueue

    if not args.config:
        raise AdminError("forward needs the server's --config FILE (its data_dir and rules)")
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        raise AdminError(str(exc)) from None
    known = sorted({rule.destination for rule in settings.forward_rules})
    if args.destination and args.destination not in known:
        raise AdminError(f"{args.destination} is no destination of [forward_rules] "
                         f"(those are: {', '.join(known) or 'none'})")
    queue = ForwardQueue(os.path.join(node_paths(settings).node_dir, "forward"))
    for destination in [args.destination] if args.destination else known:
        if args.action == "retry":
            out.write(f"{destination}: {queue.retry_parked(destination)} parked item(s) "
                      "queued again\n")
        elif args.action == "parked":
            for ticket in queue.tickets(destination, parked=True):
                out.write(f"{destination}\t{ticket.sop_instance_uid}\t{ticket.attempts} "
                          f"attempts\t{ticket.last_error}\t{ticket.path}\n")
        else:
            queued, parked = queue.depth(destination)
            out.write(f"{destination}: {queued} queued, {parked} parked\n")
    return EXIT_OK


def main(argv: Sequence[str] | None = None, out: TextIO | None = None,
         err: TextIO | None = None) -> int:
    """Run ``sdcc-admin``; the exit status.  A reader that goes away
    (``sdcc-admin list | head``) ends it quietly."""
    out = out or sys.stdout
    err = err or sys.stderr
    args = build_parser().parse_args(argv)
    if args.command == "quarantine":
        node_dir = args.node_dir
        if node_dir is None and args.config:
            try:
                settings = load_settings(args.config)
            except ConfigError as exc:
                err.write(f"sdcc-admin: {exc}\n")
                return EXIT_USAGE
            node_dir = node_paths(settings).node_dir
        if node_dir is None:
            err.write("sdcc-admin: say where the journal is: --config FILE or "
                      "quarantine --node-dir DIR\n")
            return EXIT_USAGE
        return quarantine(node_dir, args.retry, out, err)
    try:
        code = _run(args, out, err)
        out.flush()
        return code
    except BrokenPipeError:
        # point stdout at /dev/null so the interpreter's last flush is silent
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return EXIT_OK


def _run(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """The command of ``args``; the exit status."""
    try:
        if args.command == "forward":
            return forward_admin(args, out)
        target = resolve_target(args)
        layout = KeyLayout(target.key_prefix)
        client = connect(target.redis_url, args.timeout)
        if args.command == "rebuild":
            if not target.root:
                raise AdminError("rebuild needs the storage root: --root DIR "
                                 "or [storage] root in --config")
            started = time.monotonic()
            summary = rebuild(client, layout, target.root, err)
            for path, why in summary.unreadable[:20]:
                err.write(f"skipped {path}: {why}\n")
            if len(summary.unreadable) > 20:
                err.write(f"... and {len(summary.unreadable) - 20} more\n")
            out.write(
                f"Rebuilt the index {layout.prefix!r} at {target.redis_url} "
                f"from {target.root}: {summary.indexed} instances indexed "
                f"from {summary.files} files, {summary.duplicates} duplicate "
                f"SOP Instance UIDs, {len(summary.unreadable)} unreadable, "
                f"{summary.deleted_keys} old keys deleted, "
                f"{time.monotonic() - started:.1f} s.\n")
            return EXIT_OK
        if args.command == "list":
            return list_index(client, layout, out)
        if args.command == "delete":
            if not target.root:
                raise AdminError("delete needs the storage root: --root DIR "
                                 "or [storage] root in --config")
            return delete(client, layout, args.level, args.uid, target.root, out, err)
        return show(client, layout, args.uid, out, err)
    except AdminError as exc:
        err.write(f"sdcc-admin: {exc}\n")
        return EXIT_USAGE
    except Exception as exc:
        import redis

        if isinstance(exc, redis.exceptions.RedisError):
            err.write(f"sdcc-admin: Redis error: {exc}\n")
            return EXIT_USAGE
        raise


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
