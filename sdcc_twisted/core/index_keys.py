"""The Redis key layout of the instance index, and the pure record -> commands map.

No Twisted and no I/O here: :class:`sdcc_twisted.storage.index.RedisIndex` (txredisapi)
and ``sdcc-admin rebuild`` (redis-py) both build their commands with these
functions, so the two can never write different layouts.

Key layout (``{p}`` is ``[index] key_prefix``, default ``sdcc:``)::

    {p}instance:{sop_uid}             hash  path, sop_class_uid, transfer_syntax,
                                            size, received_at, calling_ae,
                                            study_uid, series_uid, patient_id
                                            + the IMAGE-level keywords
    {p}series:{series_uid}            hash  SERIES-level keywords + study_uid
    {p}study:{study_uid}              hash  STUDY-level keywords + patient_id
    {p}patient:{patient_id}           hash  PATIENT-level keywords (PatientID
                                            always present, maybe empty)
    {p}patients                       set   every patient id
    {p}patient_studies:{patient_id}   set   Study Instance UIDs of the patient
    {p}study_series:{study_uid}       set   Series Instance UIDs of the study
    {p}series_instances:{series_uid}  set   SOP Instance UIDs of the series
    {p}lock:ae:{ae_title}             str   association lock token (PX expiry)

Hash fields named by DICOM keyword hold the values of
:data:`sdcc_twisted.core.records.INDEX_ATTRIBUTES` present in the data set; hashes
of series, studies and patients are merged (HSET), so the latest instance's
values win and attributes absent from it are kept.  ``size`` and
``received_at`` are decimal strings (``repr`` of the float for the latter).

Every key ends with its id and every kind of key has its own fixed head, so an
id containing ``:`` (Patient IDs may) never makes one key look like another.

Ids: an empty Patient ID, Study or Series Instance UID is keyed as
:data:`NO_ID` (``\\none``); a value that starts with a backslash gets one
more in front; any other value is its own id.  So no value collides with the
empty one or with another value (a peer may send the two-valued Patient ID
``\\none``: it is keyed ``\\\\none``), and :func:`raw_id` undoes it.  The
relation sets hold ids; the ``patient_id``, ``study_uid`` and ``series_uid``
fields keep the raw values.

A record is written by DEL + HSET of the instance hash, HSET of the series,
study and patient hashes and SADD into the four sets.  When the instance was
indexed before under another series, study or patient it is first detached:
removed from the old sets, and any series, study or patient left empty is
deleted, so exactly one entry remains.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from sdcc_twisted.core.records import INDEX_ATTRIBUTES, InstanceRecord

#: Key id used for an empty Patient ID, Study or Series Instance UID.
NO_ID: Final = "\\none"

#: One Redis command: the name, then its arguments, all text.
Command = tuple[str, ...]

_LEVEL_KEYWORDS: Final[dict[str, tuple[str, ...]]] = {
    level: tuple(keyword for _, keyword in attrs)
    for level, attrs in INDEX_ATTRIBUTES.items()
}


def key_id(value: str) -> str:
    """The id under which ``value`` is keyed: :data:`NO_ID` if empty, one
    more backslash in front if it starts with one, else itself (one to one)."""
    if not value:
        return NO_ID
    return "\\" + value if value[0] == "\\" else value


def raw_id(ident: str) -> str:
    """The value keyed as ``ident`` (the inverse of :func:`key_id`)."""
    if ident == NO_ID:
        return ""
    return ident[1:] if ident[:1] == "\\" else ident


def _glob_escape(text: str) -> str:
    """Escape the characters that SCAN MATCH treats as a pattern."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


class KeyLayout:
    """Names the keys of one index (see the module docstring)."""

    def __init__(self, prefix: str = "sdcc:") -> None:
        self.prefix = prefix

    def instance(self, sop_uid: str) -> str:
        return f"{self.prefix}instance:{sop_uid}"

    def replication_barrier(self) -> str:
        """A counter written before each ``WAIT`` on Sentinel (see
        :mod:`sdcc_twisted.storage.sentinel`)."""
        return f"{self.prefix}replication"

    def series(self, series_id: str) -> str:
        return f"{self.prefix}series:{series_id}"

    def study(self, study_id: str) -> str:
        return f"{self.prefix}study:{study_id}"

    def patient(self, patient_id: str) -> str:
        return f"{self.prefix}patient:{patient_id}"

    def patients(self) -> str:
        return f"{self.prefix}patients"

    def patient_studies(self, patient_id: str) -> str:
        return f"{self.prefix}patient_studies:{patient_id}"

    def study_series(self, study_id: str) -> str:
        return f"{self.prefix}study_series:{study_id}"

    def series_instances(self, series_id: str) -> str:
        return f"{self.prefix}series_instances:{series_id}"

    def ae_lock(self, ae_title: str) -> str:
        return f"{self.prefix}lock:ae:{ae_title}"

    def study_arrivals(self) -> str:
        """Sorted set: Study Instance UID -> time of its latest arrival,
        while it waits to count as complete."""
        return f"{self.prefix}arrivals"

    def study_new_instances(self, study_uid: str = "") -> str:
        """Counter of a study's instances since it last counted as complete
        (without ``study_uid``: the prefix the claim script appends it to)."""
        return f"{self.prefix}arrivals:new:{study_uid}"

    def all_keys_pattern(self) -> str:
        """SCAN MATCH pattern for every key under the prefix."""
        return _glob_escape(self.prefix) + "*"

    def is_lock(self, key: str) -> bool:
        """Whether ``key`` is an association lock (not index data)."""
        return key.startswith(f"{self.prefix}lock:")


@dataclass(frozen=True)
class Placement:
    """Where an instance hangs in the tree: the key ids of its parents."""

    patient: str
    study: str
    series: str

    @classmethod
    def of_record(cls, rec: InstanceRecord) -> Placement:
        return cls(key_id(rec.patient_id), key_id(rec.study_uid),
                   key_id(rec.series_uid))

    @classmethod
    def of_fields(cls, fields: Mapping[str, str]) -> Placement:
        """The placement stored in an instance hash."""
        return cls(key_id(fields.get("patient_id", "")),
                   key_id(fields.get("study_uid", "")),
                   key_id(fields.get("series_uid", "")))


def _level_fields(rec: InstanceRecord, level: str) -> dict[str, str]:
    return {k: rec.attributes[k] for k in _LEVEL_KEYWORDS[level]
            if k in rec.attributes}


def instance_fields(rec: InstanceRecord) -> dict[str, str]:
    """The fields of ``{p}instance:{sop_uid}``."""
    fields = _level_fields(rec, "IMAGE")
    fields.update(
        path=rec.path, sop_class_uid=rec.sop_class_uid,
        transfer_syntax=rec.transfer_syntax, size=str(int(rec.size)),
        received_at=repr(float(rec.received_at)), calling_ae=rec.calling_ae,
        study_uid=rec.study_uid, series_uid=rec.series_uid,
        patient_id=rec.patient_id, sequence=str(int(rec.sequence)),
    )
    return fields


def stored_sequence(fields: Mapping[str, str]) -> int:
    """The sequence of an indexed instance (0 when it has none)."""
    try:
        return int(fields.get("sequence") or 0)
    except ValueError:
        return 0


def superseded_path(rec: InstanceRecord, indexed_path: str) -> str | None:
    """When ``rec`` is older than the indexed entry: its own file, to delete
    unless the newer copy took the same path."""
    return rec.path if rec.path != indexed_path else None


def series_fields(rec: InstanceRecord) -> dict[str, str]:
    """The fields of ``{p}series:{series_uid}``."""
    fields = _level_fields(rec, "SERIES")
    fields["study_uid"] = rec.study_uid
    return fields


def study_fields(rec: InstanceRecord) -> dict[str, str]:
    """The fields of ``{p}study:{study_uid}``."""
    fields = _level_fields(rec, "STUDY")
    fields["patient_id"] = rec.patient_id
    return fields


def patient_fields(rec: InstanceRecord) -> dict[str, str]:
    """The fields of ``{p}patient:{patient_id}``."""
    fields = _level_fields(rec, "PATIENT")
    fields["PatientID"] = rec.patient_id
    return fields


def _hset(key: str, fields: Mapping[str, str]) -> Command:
    flat: list[str] = []
    for name in sorted(fields):
        flat += [name, fields[name]]
    return ("HSET", key, *flat)


def record_commands(layout: KeyLayout, rec: InstanceRecord) -> list[Command]:
    """The commands that write ``rec`` (attach only; see :func:`plan_record`)."""
    at = Placement.of_record(rec)
    sop = rec.sop_instance_uid
    return [
        ("DEL", layout.instance(sop)),
        _hset(layout.instance(sop), instance_fields(rec)),
        _hset(layout.series(at.series), series_fields(rec)),
        _hset(layout.study(at.study), study_fields(rec)),
        _hset(layout.patient(at.patient), patient_fields(rec)),
        ("SADD", layout.patients(), at.patient),
        ("SADD", layout.patient_studies(at.patient), at.study),
        ("SADD", layout.study_series(at.study), at.series),
        ("SADD", layout.series_instances(at.series), sop),
    ]


#: One round trip for the usual records: instances that are new, or that
#: stay where they were, one or many at once.  For each instance i the
#: script compares the stored placement with the new one and, if nothing
#: moves, runs the attach commands of :func:`record_commands` (atomically,
#: as a script does); otherwise it writes nothing for it and answers
#: ``moved``, and the caller takes the transaction path of
#: :func:`plan_record`.  An instance whose indexed entry has a higher
#: sequence is not written (``stale``, with the indexed path).  KEYS[i]: the
#: instance hashes.  ARGV[1]: NO_ID; ARGV[2]: one JSON array with, per
#: instance, the new patient, study and series key ids, the commands and the
#: sequence.  The answer is one JSON array of
#: ``[outcome, old path]`` pairs.  Two arguments and one reply string keep
#: the client's encoding and parsing to a few calls per batch.
ATTACH_SCRIPT: Final = """
local function kid(v)
  if (not v) or v == '' then return ARGV[1] end
  if string.byte(v, 1) == 92 then return '\\\\' .. v end
  return v
end
local batch = cjson.decode(ARGV[2])
local answer = {}
for i, key in ipairs(KEYS) do
  local new = batch[i]
  local old = redis.call('HMGET', key, 'path', 'patient_id', 'study_uid', 'series_uid',
                         'sequence')
  if old[1] and (tonumber(old[5] or '0') or 0) > new[5] then
    answer[i] = {'stale', old[1]}
  elseif old[1] and (kid(old[2]) ~= new[1] or kid(old[3]) ~= new[2]
                     or kid(old[4]) ~= new[3]) then
    answer[i] = {'moved', ''}
  else
    for _, command in ipairs(new[4]) do
      redis.call(unpack(command))
    end
    answer[i] = {'done', old[1] or ''}
  end
end
return cjson.encode(answer)
"""


def attach_script_args(layout: KeyLayout,
                       records: Sequence[InstanceRecord]) -> tuple[list[str], list[str]]:
    """KEYS and ARGV of :data:`ATTACH_SCRIPT` for ``records``."""
    keys: list[str] = []
    batch: list[list[object]] = []
    for rec in records:
        at = Placement.of_record(rec)
        keys.append(layout.instance(rec.sop_instance_uid))
        batch.append([at.patient, at.study, at.series, record_commands(layout, rec),
                      int(rec.sequence)])
    return keys, [NO_ID, json.dumps(batch, ensure_ascii=False)]


def attach_script_answers(reply: str | bytes) -> list[tuple[str, str]]:
    """The ``(outcome, old path)`` pairs of an :data:`ATTACH_SCRIPT` reply."""
    return [(str(outcome), str(old)) for outcome, old in json.loads(reply)]


def detach_probes(layout: KeyLayout, sop_uid: str, old: Placement,
                  new: Placement | None) -> list[tuple[str, str]]:
    """The (set key, member) pairs whose other members must be counted
    before the instance moves from ``old`` to ``new`` (``None``: removed).

    Empty when nothing moves.  The caller WATCHes these sets and passes
    ``SCARD - SISMEMBER`` of each to :func:`detach_commands`.
    """
    if new == old:
        return []
    return [
        (layout.series_instances(old.series), sop_uid),
        (layout.study_series(old.study), old.series),
        (layout.patient_studies(old.patient), old.study),
    ]


def detach_commands(layout: KeyLayout, sop_uid: str, old: Placement,
                    new: Placement | None,
                    others: Mapping[str, int]) -> list[Command]:
    """Commands that take the instance out of ``old`` before it goes to
    ``new`` (``None``: removed), deleting whatever is left empty.

    Args:
        others: set key -> number of members other than the probed one, for
            every key of :func:`detach_probes`.
    """
    if new == old:
        return []
    cmds: list[Command] = []
    series_gone = study_gone = False
    if new is None or new.series != old.series:
        key = layout.series_instances(old.series)
        cmds.append(("SREM", key, sop_uid))
        if others[key] == 0:
            series_gone = True
            cmds += [("DEL", layout.series(old.series)), ("DEL", key)]
    series_moved = (new is not None and new.series == old.series
                    and new.study != old.study)
    if series_gone or series_moved:
        key = layout.study_series(old.study)
        cmds.append(("SREM", key, old.series))
        if others[key] == 0 and (new is None or new.study != old.study):
            study_gone = True
            cmds += [("DEL", layout.study(old.study)), ("DEL", key)]
    study_moved = (new is not None and new.study == old.study
                   and new.patient != old.patient)
    if study_gone or study_moved:
        key = layout.patient_studies(old.patient)
        cmds.append(("SREM", key, old.study))
        if others[key] == 0 and (new is None or new.patient != old.patient):
            cmds += [("DEL", layout.patient(old.patient)), ("DEL", key),
                     ("SREM", layout.patients(), old.patient)]
    return cmds


def plan_record(layout: KeyLayout, rec: InstanceRecord,
                old_fields: Mapping[str, str],
                others: Mapping[str, int]) -> tuple[list[Command], str | None]:
    """All commands of one record (one MULTI/EXEC), and the previous path.

    Args:
        old_fields: the instance hash as it is now (empty if not indexed).
        others: the counts of :func:`detach_probes` for the old placement.

    Returns:
        (commands, the path of a file no longer indexed, or None): the
        previous path if it differs from ``rec.path``; when the indexed
        entry is newer (a higher sequence), no commands and ``rec``'s own
        path unless the newer copy took the same one.
    """
    cmds: list[Command] = []
    previous = None
    if old_fields and stored_sequence(old_fields) > rec.sequence:
        return [], superseded_path(rec, old_fields.get("path", ""))
    if old_fields:
        old = Placement.of_fields(old_fields)
        cmds += detach_commands(layout, rec.sop_instance_uid, old,
                                Placement.of_record(rec), others)
        old_path = old_fields.get("path") or None
        if old_path != rec.path:
            previous = old_path
    cmds += record_commands(layout, rec)
    return cmds, previous


def plan_remove(layout: KeyLayout, sop_uid: str, old_fields: Mapping[str, str],
                others: Mapping[str, int]) -> list[Command]:
    """All commands that remove an indexed instance (one MULTI/EXEC)."""
    old = Placement.of_fields(old_fields)
    cmds = detach_commands(layout, sop_uid, old, None, others)
    cmds.append(("DEL", layout.instance(sop_uid)))
    return cmds


def others_from_counts(pairs: Sequence[tuple[str, str]],
                       counts: Sequence[tuple[int, bool]]) -> dict[str, int]:
    """Turn (SCARD, SISMEMBER) replies for ``pairs`` into ``others``."""
    return {key: int(card) - (1 if member else 0)
            for (key, _), (card, member) in zip(pairs, counts)}
