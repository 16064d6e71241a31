"""C-FIND matching and Q/R identifiers: the sans-I/O core of Query/Retrieve.

No Twisted, no Redis, no files: only the standard library, pydicom and the
sans-I/O core modules (:mod:`~sdcc_twisted.core.conformance`,
:mod:`~sdcc_twisted.core.records`, :mod:`~sdcc_twisted.core.dataset_head`).  This module
implements the SCP side of the Query/Retrieve Service Class (PS3.4 Annex C)
for the Patient Root and Study Root information models (PS3.4 C.6.1, C.6.2),
levels PATIENT, STUDY, SERIES and IMAGE, over the attribute dicts the index
holds (:data:`sdcc_twisted.core.records.INDEX_ATTRIBUTES`: keyword -> decoded
string, multiple values joined by backslash).

* :func:`parse_identifier` decodes a C-FIND request identifier into a
  :class:`Query` and checks it against the hierarchical model (PS3.4 C.4.1.2.1,
  C.4.1.3.1);
* :func:`matches` tells whether one entity of a level matches (PS3.4 C.2.2.2);
* :func:`response_identifier` encodes the identifier of a pending C-FIND-RSP
  (PS3.4 C.4.1.1.3.2);
* :func:`retrieve_keys` decodes and checks a C-MOVE or C-GET identifier
  (PS3.4 C.4.2.1.4.1, C.4.2.2.1, C.4.3.1.3.1, C.4.3.2.1).

Matching supported (PS3.4 C.2.2.2), on the keys the index holds only:

* Single Value Matching (C.2.2.2.1): exact and case-sensitive, except PN,
  which is matched case-insensitively (Unicode case folding, character by
  character), in Single Value and Wild Card Matching alike.  Insignificant
  spaces are ignored: leading and trailing for AE CS DS IS LO PN SH UC UI,
  trailing for LT ST UT UR (PS3.5 6.2).  IS and DS values compare
  numerically when both sides are numbers ("007" matches "7").  PN:
  trailing empty components and component groups are dropped, and a key
  without "=" also matches any single component group of a multi-group
  name ("Yamada^Tarou" matches "Yamada^Tarou=山田^太郎").
* List of UID Matching (C.2.2.2.2): UI keys with backslash-separated UIDs.
* Universal Matching (C.2.2.2.3): a zero-length key, or one made only of "*"
  (C.2.2.2.4: "*" is equivalent to Universal Matching), matches every entity,
  including those whose attribute is absent or empty.
* Wild Card Matching (C.2.2.2.4): "*" (any sequence, also empty) and "?"
  (exactly one character) for AE CS LO LT PN SH ST UC UR UT; every other
  character is literal (".", "^", "[", "%" ... included).  There is no escape:
  a literal "*" or "?" cannot be searched for (as the standard says).  For PN
  a stored name with fewer "^" than the key is padded with empty components
  before matching ("Smith^*" matches "Smith").  No wild cards for DA TM DT
  UI IS DS: there "*" and "?" are literal characters (such a key matches
  nothing).
* Range Matching (C.2.2.2.5) for DA ("d1-d2", "-d2", "d1-"), TM and DT,
  bounds inclusive.  A partial value denotes its whole period: a lower bound
  starts at its beginning, an upper bound ends at its end ("-12" includes
  12:59:59.999999, "-2020" includes 2020-12-31).  A stored value is compared
  by its beginning ("08" is 08:00:00).  A single (non-range) DA TM DT key
  matches the stored values that fall within its period ("0830" matches
  "083015.5").  Legacy "YYYY.MM.DD" dates and "HH:MM:SS" times are accepted.
  A TM range crossing midnight is reversed, hence invalid (as in C.2.2.2.5).
* Multiple values in a non-UI key ("CT\\MR") match when any one value
  matches.  This is an extension: without Extended Negotiation the standard
  defines several values only for UIDs (List of UID Matching).  A
  multi-valued attribute (such as Modalities in Study) matches when any of
  its values matches.

Zero-length (or absent) attributes: by default they match only universal
keys.  PS3.4 C.2.2.1.2 says an SCP shall consider a Required Key of zero
length as unknown and matching; pass ``match_unknown=True`` to
:func:`matches` for that (never for the Unique Keys).

Counts of related entities and Modalities in Study (:data:`COMPUTED_KEYS`,
PS3.4 C.3 optional keys) are computed by the caller from the index's
relation sets and then matched like the keys the index holds: IS counts by
value ("3" matches "03"), Modalities in Study when any of its values
matches ("CT" matches a study with CT and MR series).

Other keys the index does not hold for a level are return keys only: they never
restrict the matches, and come back zero-length unless the caller supplies
them (``extra``).  Keys of levels below the query level are tolerated: not
matched, returned with what ``attributes`` holds (normally zero-length).
Sequence keys (SQ), private and unknown tags, group lengths and groups 0000
and 0002 are ignored.  The identifier's encoding is checked by
:class:`~sdcc_twisted.core.dataset_head.DatasetWalker` first, which is strict
(ascending tags, even lengths, PS3.5 7.1): a malformed one gives 0xC000.

Not supported: relational queries (C.4.1.2.2.1; the hierarchical model is
enforced), Extended Negotiation of combined date-time matching, fuzzy
semantic PN matching, Empty Value Matching ("" keys) and timezone adjustment;
UTC offsets in DT values and Timezone Offset From UTC (0008,0201) are ignored
(times compare as written); Sequence Matching (C.2.2.2.6).  Character sets:
the identifier is decoded with its Specific Character Set by pydicom; an
unknown term falls back as pydicom does (with a warning); matching is done on
the decoded text.  A response with non-ASCII text is encoded in UTF-8
("ISO_IR 192").  Deflated transfer syntaxes are not supported.

Statuses (PS3.4 C.4.1.1.4, Table C.4-1): an unparseable identifier gives
0xC000 (Unable to process); a missing or invalid Query/Retrieve Level, a
missing higher-level Unique Key, or an invalid date/time key gives 0xA900
(Identifier does not match SOP Class).
"""

from __future__ import annotations

import re
from calendar import monthrange
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from typing import TYPE_CHECKING, Any, BinaryIO, Final, cast

# pydicom (its data dictionary above all) costs about 24 MB of memory, which
# a receiver that is never queried should not pay: it is imported by the
# functions below on the first query, not with this module.
if TYPE_CHECKING:
    from pydicom.dataelem import DataElement

from sdcc_twisted.core.conformance import (
    BIG_ENDIAN_SYNTAXES,
    IMPLICIT_VR_SYNTAXES,
    STATUS_IDENTIFIER_MISMATCH,
    STATUS_UNABLE_TO_PROCESS,
)
from sdcc_twisted.core.dataset_head import DatasetWalker, decode_value
from sdcc_twisted.core.errors import DatasetError
from sdcc_twisted.core.records import INDEX_ATTRIBUTES

__all__ = [
    "COMPUTED_KEYS",
    "COUNT_KEYS",
    "LEVELS",
    "MODALITIES_IN_STUDY",
    "PATIENT_ROOT",
    "STUDY_ROOT",
    "UNIQUE_KEYS",
    "Query",
    "QueryError",
    "matches",
    "matches_all",
    "parse_identifier",
    "response_identifier",
    "retrieve_keys",
]

# -- Information models and levels (PS3.4 C.6.1.1, C.6.2.1) -------------------
PATIENT_ROOT: Final = "PATIENT"
STUDY_ROOT: Final = "STUDY"
LEVELS: Final = ("PATIENT", "STUDY", "SERIES", "IMAGE")
UNIQUE_KEYS: Final = {
    "PATIENT": "PatientID",
    "STUDY": "StudyInstanceUID",
    "SERIES": "SeriesInstanceUID",
    "IMAGE": "SOPInstanceUID",
}
#: model -> the Query/Retrieve levels it has, top down.
MODEL_LEVELS: Final[dict[str, tuple[str, ...]]] = {
    PATIENT_ROOT: LEVELS,
    STUDY_ROOT: LEVELS[1:],
}

# -- Tags and VRs --------------------------------------------------------------
_QUERY_RETRIEVE_LEVEL: Final = 0x00080052
_SPECIFIC_CHARACTER_SET: Final = 0x00080005
_EXCLUDED_KEYWORDS: Final = frozenset({"QueryRetrieveLevel", "SpecificCharacterSet"})

#: VRs whose text is decoded with the Specific Character Set (PS3.5 6.1.2.3).
_CHARSET_VRS: Final = frozenset("SH LO ST LT UC UT PN".split())
#: VRs with a single value, in which a backslash is an ordinary character.
_SINGLE_VALUE_VRS: Final = frozenset("LT ST UT UR".split())
#: VRs where leading spaces are padding too (PS3.5 Table 6.2-1).
_STRIP_BOTH_VRS: Final = frozenset("AE CS DS IS LO PN SH UC UI".split())
#: VRs allowing Wild Card Matching (PS3.4 C.2.2.2.4).
_WILDCARD_VRS: Final = frozenset("AE CS LO LT PN SH ST UC UR UT".split())
#: Range-matchable VRs (PS3.4 C.2.2.2.5).
_TEMPORAL_VRS: Final = frozenset({"DA", "TM", "DT"})
#: Binary numeric VRs: struct format of one value.
_BINARY_VRS: Final[dict[str, str]] = {
    "US": "H", "SS": "h", "UL": "L", "SL": "l", "UV": "Q", "SV": "q",
    "FL": "f", "FD": "d", "AT": "HH",
}
#: VRs whose values are bytes: never matched, always returned zero-length.
_BYTES_VRS: Final = frozenset("OB OD OF OL OV OW UN".split())

#: level -> keywords the index holds at that level (+ the level's unique key).
_INDEXED: Final[dict[str, frozenset[str]]] = {
    level: frozenset(keyword for _, keyword in INDEX_ATTRIBUTES[level])
    | {UNIQUE_KEYS[level]}
    for level in LEVELS
}
#: Keys counted from the index's relation sets (PS3.4 C.3.2-C.3.4 optional
#: keys, C.6.1.1 and C.6.2.1): keyword -> (its level, the level counted).
COUNT_KEYS: Final[dict[str, tuple[str, str]]] = {
    "NumberOfPatientRelatedStudies": ("PATIENT", "STUDY"),
    "NumberOfPatientRelatedSeries": ("PATIENT", "SERIES"),
    "NumberOfPatientRelatedInstances": ("PATIENT", "IMAGE"),
    "NumberOfStudyRelatedSeries": ("STUDY", "SERIES"),
    "NumberOfStudyRelatedInstances": ("STUDY", "IMAGE"),
    "NumberOfSeriesRelatedInstances": ("SERIES", "IMAGE"),
}
#: Modalities in Study (0008,0061): the distinct Modality of the study's series.
MODALITIES_IN_STUDY: Final = "ModalitiesInStudy"
#: level -> the keys computed for an entity of that level (not in its hash).
COMPUTED_KEYS: Final[dict[str, frozenset[str]]] = {
    level: frozenset(k for k, (where, _) in COUNT_KEYS.items() if where == level)
    | ({MODALITIES_IN_STUDY} if level == "STUDY" else frozenset())
    for level in LEVELS
}
#: level -> the keys matched at that level: held in the index or computed.
_MATCHED: Final[dict[str, frozenset[str]]] = {
    level: _INDEXED[level] | COMPUTED_KEYS[level] for level in LEVELS
}
_ALL_INDEXED: Final = frozenset().union(*_INDEXED.values())
_UNIQUE_KEYWORDS: Final = frozenset(UNIQUE_KEYS.values())

_DAY_US: Final = 86_400_000_000


class QueryError(Exception):
    """A Q/R identifier that cannot be served, with the status to answer.

    Attributes:
        status: the DIMSE status of the failure response (0xA900 or 0xC000).
        comment: the Error Comment (0000,0902), at most 64 characters.
    """

    def __init__(self, status: int, comment: str) -> None:
        comment = comment[:64]
        super().__init__(f"0x{status:04X}: {comment}")
        self.status = status
        self.comment = comment


@dataclass(frozen=True)
class Query:
    """A decoded Q/R identifier (PS3.4 C.4.1.1.3.1).

    Attributes:
        model: :data:`PATIENT_ROOT` or :data:`STUDY_ROOT`.
        level: the Query/Retrieve Level, one of :data:`LEVELS`.
        keys: keyword -> value as given, padding stripped, multiple values
            joined by backslash; "" asks for the attribute (return key).
            Query/Retrieve Level and Specific Character Set are not in it.
        vrs: keyword -> VR of each key, from pydicom's data dictionary.
        charset: the Specific Character Set of the identifier, if any.
    """

    model: str
    level: str
    keys: dict[str, str]
    vrs: dict[str, str]
    charset: str | None = None

    @property
    def hierarchy(self) -> tuple[str, ...]:
        """The levels whose keys an entity at :attr:`level` must match, top down.

        PATIENT down to :attr:`level` in both models: in the Study Root model
        the patient attributes are study-level keys (PS3.4 C.6.2.1.2), and the
        index keeps them on the patient.
        """
        return LEVELS[:LEVELS.index(self.level) + 1]

    def level_keys(self, level: str) -> dict[str, str]:
        """The keys of :attr:`keys` matched at ``level``: those the index
        holds there, and those computed for it (:data:`COMPUTED_KEYS`)."""
        names = _MATCHED[_check_level(level)]
        return {k: v for k, v in self.keys.items() if k in names}

    def computed_keys(self, level: str) -> frozenset[str]:
        """The keys of :data:`COMPUTED_KEYS` at ``level`` that the query holds
        (as return or matching keys): the caller computes these for each
        entity of ``level`` before :func:`matches`."""
        return COMPUTED_KEYS[_check_level(level)] & self.keys.keys()

    def unique_values(self, level: str) -> list[str] | None:
        """The values of ``level``'s Unique Key, or None to search all.

        A list when the key holds one value or a list of values (PS3.4
        C.2.2.2.2) without wild cards: exactly the entities with one of these
        values can match, so the caller may look them up directly.  None when
        the key is absent, universal or holds a wild card.
        """
        value = self.keys.get(UNIQUE_KEYS[_check_level(level)])
        if value is None:
            return None
        parts = _split_key(value, self.vrs.get(UNIQUE_KEYS[level], "UI"))
        if not parts or any("*" in p or "?" in p for p in parts):
            return None
        return list(dict.fromkeys(parts))


# -- Identifier decoding (PS3.5 7.1, 6.1; PS3.4 C.4.1.1.3.1) -------------------
def parse_identifier(data: bytes, transfer_syntax: str, model: str) -> Query:
    """Decode and check a C-FIND request identifier (PS3.4 C.4.1.1.3.1).

    Args:
        data: the identifier data set, encoded in ``transfer_syntax``.
        transfer_syntax: the presentation context's transfer syntax UID.
        model: :data:`PATIENT_ROOT` or :data:`STUDY_ROOT`.

    Raises:
        QueryError: 0xC000 when the data set cannot be decoded; 0xA900 when
            the Query/Retrieve Level is missing or not of the model, when a
            higher level's Unique Key lacks a single value (PS3.4 C.4.1.2.1,
            C.4.1.3.1) or when a date/time key is not a valid value or range.
    """
    query = _decode(data, transfer_syntax, model)
    for level in query.hierarchy[:-1]:
        if level in MODEL_LEVELS[model]:
            _require(query, UNIQUE_KEYS[level], single=True)
    for keyword, value in query.keys.items():
        vr = query.vrs.get(keyword, "")
        if keyword in _ALL_INDEXED and vr in _TEMPORAL_VRS:
            for part in _split_key(value, vr):
                if not _is_universal_part(part) and _temporal_key(part, vr) is None:
                    raise QueryError(STATUS_IDENTIFIER_MISMATCH,
                                     f"invalid {keyword} value {part!r}")
    return query


def retrieve_keys(data: bytes, transfer_syntax: str, model: str) -> Query:
    """Decode and check a C-MOVE or C-GET identifier (PS3.4 C.4.2.2.1, C.4.3.2.1).

    The Unique Key of the level must hold one value (Patient ID) or a list of
    UIDs (PS3.4 C.4.2.1.4.1); each higher level's Unique Key must hold one
    value.  Other keys are kept but play no part in a retrieve.

    Raises:
        QueryError: as :func:`parse_identifier`, and 0xA900 for a missing
            or wild-carded Unique Key.
    """
    query = _decode(data, transfer_syntax, model)
    for level in query.hierarchy[:-1]:
        if level in MODEL_LEVELS[model]:
            _require(query, UNIQUE_KEYS[level], single=True)
    _require(query, UNIQUE_KEYS[query.level], single=query.level == "PATIENT")
    return query


def _require(query: Query, keyword: str, single: bool) -> None:
    """Raise 0xA900 unless ``keyword`` holds one value (or a list of them)."""
    from pydicom.datadict import tag_for_keyword

    tag = tag_for_keyword(keyword) or 0
    where = f"{keyword} ({tag >> 16:04X},{tag & 0xFFFF:04X})"
    value = query.keys.get(keyword)
    if value is None:
        raise QueryError(STATUS_IDENTIFIER_MISMATCH, f"missing {where}")
    parts = _split_key(value, query.vrs.get(keyword, "UI"))
    if (not parts or any("*" in p or "?" in p for p in parts)
            or (single and len(parts) != 1)):
        wanted = "a single value" if single else "UID values"
        raise QueryError(STATUS_IDENTIFIER_MISMATCH, f"{where} needs {wanted}")


def _decode(data: bytes, transfer_syntax: str, model: str) -> Query:
    """Decode an identifier into a :class:`Query`, checking only its level."""
    from pydicom.charset import convert_encodings
    from pydicom.datadict import keyword_for_tag
    from pydicom.filebase import DicomBytesIO
    from pydicom.filereader import read_dataset

    if model not in MODEL_LEVELS:
        raise ValueError(f"unknown information model {model!r}")
    implicit = transfer_syntax in IMPLICIT_VR_SYNTAXES
    little = transfer_syntax not in BIG_ENDIAN_SYNTAXES
    keys: dict[str, str] = {}
    vrs: dict[str, str] = {}
    charset: str | None = None
    level: str | None = None
    if data:
        walker = DatasetWalker(transfer_syntax, wanted={})
        try:
            walker.feed(data)
            walker.finish()
        except DatasetError as exc:
            raise QueryError(STATUS_UNABLE_TO_PROCESS,
                             f"bad identifier: {exc}") from exc
        try:
            dataset = read_dataset(cast(BinaryIO, DicomBytesIO(bytes(data))), implicit, little)
            elements = [dataset.get_item(tag) for tag in dataset.keys()]
        except Exception as exc:  # pydicom's errors are of many types
            raise QueryError(STATUS_UNABLE_TO_PROCESS,
                             f"bad identifier: {exc}") from exc
        encodings = ["iso8859"]
        for elem in elements:
            if elem.tag == _SPECIFIC_CHARACTER_SET and elem.value:
                raw = elem.value if isinstance(elem.value, bytes) else b""
                terms = [t.strip() for t in raw.decode("latin-1").rstrip(
                    "\x00 ").split("\\")]
                charset = "\\".join(terms)
                try:
                    encodings = convert_encodings(terms)
                except (LookupError, ValueError) as exc:
                    raise QueryError(STATUS_UNABLE_TO_PROCESS,
                                     f"bad Specific Character Set: {exc}") from exc
        for elem in elements:
            tag = int(elem.tag)
            if tag >> 16 in (0x0000, 0x0002) or tag & 0xFFFF == 0:
                continue
            keyword = keyword_for_tag(tag)
            if not keyword or keyword == "SpecificCharacterSet":
                continue
            vr = _vr_of(tag, elem.VR)
            if vr == "SQ" or getattr(elem, "length", 0) == 0xFFFFFFFF:
                continue                      # sequences: not supported keys
            value = elem.value if isinstance(elem.value, bytes) else b""
            # UN values are always little endian (PS3.5 6.2.2).
            text = "" if vr in _BYTES_VRS else decode_value(value, vr, little or elem.VR == "UN", encodings)
            if tag == _QUERY_RETRIEVE_LEVEL:
                level = text
                continue
            keys[keyword] = text
            vrs[keyword] = vr
    if level is None:
        raise QueryError(STATUS_IDENTIFIER_MISMATCH,
                         "missing QueryRetrieveLevel (0008,0052)")
    if level not in MODEL_LEVELS[model]:
        name = "Patient Root" if model == PATIENT_ROOT else "Study Root"
        if level in LEVELS:
            comment = f"QueryRetrieveLevel {level} not in {name} model"
        else:
            comment = f"invalid QueryRetrieveLevel {level!r}"
        raise QueryError(STATUS_IDENTIFIER_MISMATCH, comment)
    return Query(model=model, level=level, keys=keys, vrs=vrs, charset=charset)


def _vr_of(tag: int, explicit: str | None) -> str:
    """The VR of ``tag``: the dictionary's, the explicit one for ambiguities."""
    from pydicom.datadict import dictionary_VR

    try:
        vr = dictionary_VR(tag)
    except KeyError:
        return explicit or "UN"
    if " or " in vr:
        options = vr.split(" or ")
        return explicit if explicit in options else options[0]
    return vr


# -- Matching (PS3.4 C.2.2.2) --------------------------------------------------
def matches(query: Query, level: str, attributes: Mapping[str, str], *,
            match_unknown: bool = False) -> bool:
    """Whether an entity of ``level`` matches the query's keys of that level.

    Args:
        query: the decoded query.
        level: the level of the entity, one of :data:`LEVELS`.
        attributes: the entity's index attributes (keyword -> string).
        match_unknown: let an absent or empty attribute match any value of a
            non-unique key (PS3.4 C.2.2.1.2); by default it matches only a
            universal key.

    Only the keys the index holds at ``level`` take part (PS3.4 C.2.2.2);
    see the module docstring for the matching types.
    """
    for keyword, value in query.level_keys(level).items():
        vr = query.vrs.get(keyword) or _dictionary_vr(keyword)
        unknown = match_unknown and keyword not in _UNIQUE_KEYWORDS
        if not _match_key(value, attributes.get(keyword) or "", vr, unknown):
            return False
    return True


def matches_all(query: Query, entities: Mapping[str, Mapping[str, str]], *,
                match_unknown: bool = False) -> bool:
    """Whether an entity and its ancestors match (PS3.4 C.4.1.3.1.1).

    ``entities`` maps each level of :attr:`Query.hierarchy` to the attributes
    of the entity at that level (a missing level counts as no attributes).
    """
    return all(matches(query, level, entities.get(level, {}),
                       match_unknown=match_unknown)
               for level in query.hierarchy)


def _match_key(key: str, attribute: str, vr: str, match_unknown: bool) -> bool:
    """Match one key value against one attribute value."""
    parts = _split_key(key, vr)
    if not parts or any(_is_universal_part(p) for p in parts):
        return True                                   # C.2.2.2.3, C.2.2.2.4
    values = [v for v in _split_key(attribute, vr) if v]
    if not values:
        return match_unknown
    return any(_match_one(p, v, vr) for p in parts for v in values)


def _split_key(value: str, vr: str) -> list[str]:
    """The values of a key or attribute, normalised, empty ones dropped."""
    items = [value] if vr in _SINGLE_VALUE_VRS else value.split("\\")
    return [n for n in (_normalise(item, vr) for item in items) if n]


def _normalise(value: str, vr: str) -> str:
    """Drop insignificant spaces and NULs (PS3.5 6.2), empty PN parts."""
    value = value.rstrip("\x00 ")
    if vr in _STRIP_BOTH_VRS:
        value = value.lstrip(" ")
    if vr == "PN":
        groups = ["^".join(c.strip(" ") for c in g.split("^")).rstrip("^")
                  for g in value.split("=")]
        while groups and not groups[-1]:
            groups.pop()
        value = "=".join(groups)
    return value


def _is_universal_part(part: str) -> bool:
    """A value made of "*" only (PS3.4 C.2.2.2.4: equivalent to universal)."""
    return not part.strip("*")


def _match_one(key: str, value: str, vr: str) -> bool:
    """Match one normalised, non-universal key value against one value."""
    if vr in _TEMPORAL_VRS:
        bounds = _temporal_key(key, vr)
        point = _interval(value, vr)
        return (bounds is not None and point is not None
                and bounds[0] <= point[0] <= bounds[1])
    if vr == "PN":
        candidates = [value] + (value.split("=") if "=" not in key else [])
        carets = key.count("^")
        folded = _fold(key)
        return any(_glob(folded, _fold(c + "^" * (carets - c.count("^"))))
                   for c in candidates)
    if vr in _WILDCARD_VRS and ("*" in key or "?" in key):
        return _glob(list(key), list(value))
    if vr in ("IS", "DS"):
        a, b = _number(key), _number(value)
        if a is not None and b is not None:
            return a == b
    return key == value


def _fold(text: str) -> list[str]:
    """Case-fold a text character by character (one item per character)."""
    return [c.casefold() for c in text]


def _glob(pattern: list[str], text: list[str]) -> bool:
    """Wild card match of a whole text (PS3.4 C.2.2.2.4), in O(len * len).

    "*" matches any sequence of characters, also none; "?" exactly one;
    every other item only itself.  Iterative, so a key with many "*" cannot
    make it backtrack exponentially.
    """
    p = t = 0
    star, mark = -1, 0
    while t < len(text):
        if p < len(pattern) and pattern[p] == "*":
            star, mark = p, t
            p += 1
        elif p < len(pattern) and pattern[p] in ("?", text[t]):
            p += 1
            t += 1
        elif star >= 0:
            mark += 1
            p, t = star + 1, mark
        else:
            return False
    while p < len(pattern) and pattern[p] == "*":
        p += 1
    return p == len(pattern)


def _number(text: str) -> Decimal | None:
    """A DS or IS value as a number, or None."""
    try:
        number = Decimal(text.strip())
    except InvalidOperation:
        return None
    return number if number.is_finite() else None


# -- Dates and times (PS3.5 6.2 DA TM DT; PS3.4 C.2.2.2.5) ---------------------
_DA: Final = re.compile(r"(\d{4})\.?(\d{2})\.?(\d{2})", re.ASCII)
_TM: Final = re.compile(
    r"(\d{2})(?::?(\d{2})(?::?(\d{2})(?:\.(\d{1,6}))?)?)?", re.ASCII)
_DT: Final = re.compile(
    r"(\d{4})(?:(\d{2})(?:(\d{2})(?:(\d{2})(?:(\d{2})(?:(\d{2})"
    r"(?:\.(\d{1,6}))?)?)?)?)?)?([+-]\d{4})?", re.ASCII)


@lru_cache(maxsize=256)
def _temporal_key(key: str, vr: str) -> tuple[int, int] | None:
    """The inclusive (first, last) microseconds a DA/TM/DT key covers.

    A range "a-b", "-b" or "a-" (PS3.4 C.2.2.2.5) or a single value; None if
    the key is not valid or its bounds are reversed.
    """
    if vr == "DT":
        for i, char in enumerate(key):
            if char == "-":
                bounds = _range(key[:i], key[i + 1:], vr)
                if bounds is not None:
                    return bounds
        return _interval(key, vr)
    if key.count("-") == 1:
        low, high = key.split("-")
        return _range(low, high, vr)
    return _interval(key, vr)


def _range(low: str, high: str, vr: str) -> tuple[int, int] | None:
    """The bounds of a range "low-high", either side possibly empty."""
    first = _interval(low, vr) if low else (0, 0)
    last = _interval(high, vr) if high else (1 << 62, 1 << 62)
    if first is None or last is None or first[0] > last[1]:
        return None
    return first[0], last[1]


def _interval(text: str, vr: str) -> tuple[int, int] | None:
    """The (first, last) microseconds of a DA/TM/DT value's period, or None."""
    text = text.strip()
    try:
        if vr == "DA":
            m = _DA.fullmatch(text)
            if m is None:
                return None
            start = date(*map(int, m.groups())).toordinal() * _DAY_US
            return start, start + _DAY_US - 1
        if vr == "TM":
            m = _TM.fullmatch(text)
            if m is None:
                return None
            hour, minute, second, fraction = m.groups()
            return _time_interval(hour, minute, second, fraction, base=0)
        m = _DT.fullmatch(text)
        if m is None:
            return None
        year, month, day, hour, minute, second, fraction, _offset = m.groups()
        y = int(year)
        if month is None:
            first, last = date(y, 1, 1), date(y, 12, 31)
        elif day is None:
            first = date(y, int(month), 1)
            last = first.replace(day=monthrange(y, int(month))[1])
        else:
            first = last = date(y, int(month), int(day))
        base = first.toordinal() * _DAY_US
        if hour is None:
            return base, (last.toordinal() + 1) * _DAY_US - 1
        return _time_interval(hour, minute, second, fraction, base=base)
    except (ValueError, OverflowError):
        return None


def _time_interval(hour: str, minute: str | None, second: str | None,
                   fraction: str | None, base: int) -> tuple[int, int] | None:
    """The (first, last) microseconds of a partial time, offset by ``base``."""
    h, m, s = int(hour), int(minute or 0), int(second or 0)
    if h > 23 or m > 59 or s > 60:
        return None
    start = base + ((h * 60 + m) * 60 + s) * 1_000_000
    if fraction is not None:
        start += int(fraction.ljust(6, "0"))
        span = 10 ** (6 - len(fraction))
    elif second is not None:
        span = 1_000_000
    elif minute is not None:
        span = 60_000_000
    else:
        span = 3_600_000_000
    return start, start + span - 1


# -- Responses (PS3.4 C.4.1.1.3.2) ---------------------------------------------
def response_identifier(query: Query, level: str, attributes: Mapping[str, str],
                        transfer_syntax: str,
                        extra: Mapping[str, str] = {}) -> bytes:
    """Encode the identifier of a pending C-FIND-RSP (PS3.4 C.4.1.1.3.2).

    It holds every key of the request, valued from ``extra`` or else
    ``attributes`` (zero-length when neither has it); the Query/Retrieve
    Level; the Unique Keys of ``level`` and of the levels above it in the
    model (PS3.4 C.4.1.2.1); every entry of ``extra`` (e.g. Retrieve AE Title
    or Number of Study Related Instances); and Specific Character Set: "ISO_IR
    192" when a value is not ASCII (the data set is then UTF-8), else the
    request's if it had one.

    Args:
        query: the decoded request.
        level: the level of the matched entity (normally ``query.level``).
        attributes: the attributes of the entity and of its ancestors,
            merged (e.g. patient + study + series attributes for a series).
        transfer_syntax: the presentation context's transfer syntax UID.
        extra: keyword -> computed values; they win over ``attributes``.
    """
    from pydicom import config
    from pydicom.dataelem import DataElement
    from pydicom.datadict import tag_for_keyword
    from pydicom.dataset import Dataset
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    if level not in MODEL_LEVELS[query.model]:
        raise ValueError(f"level {level!r} is not in the {query.model} model")
    values: dict[str, str] = {}
    for keyword in query.keys:
        values[keyword] = str(extra.get(keyword, attributes.get(keyword) or ""))
    levels = MODEL_LEVELS[query.model]
    for upper in levels[:levels.index(level) + 1]:
        unique = UNIQUE_KEYS[upper]
        values[unique] = str(extra.get(unique, attributes.get(unique) or ""))
    for keyword, value in extra.items():
        values[keyword] = str(value)
    values.pop("SpecificCharacterSet", None)
    values["QueryRetrieveLevel"] = level

    dataset = Dataset()
    vrs = {keyword: query.vrs.get(keyword) or _dictionary_vr(keyword)
           for keyword in values}
    if any(not value.isascii() for value in values.values()):
        charset: str | None = "ISO_IR 192"
    else:
        charset = query.charset
    if charset:
        dataset.add(DataElement(
            _SPECIFIC_CHARACTER_SET, "CS",
            charset.split("\\") if "\\" in charset else charset,
            validation_mode=config.IGNORE))
    for keyword, value in values.items():
        tag = tag_for_keyword(keyword)
        if tag is None:
            continue
        dataset.add(_element(tag, vrs[keyword], value))
    fp = DicomBytesIO()
    fp.is_little_endian = transfer_syntax not in BIG_ENDIAN_SYNTAXES
    fp.is_implicit_VR = transfer_syntax in IMPLICIT_VR_SYNTAXES
    write_dataset(fp, dataset)
    return fp.getvalue()


def _element(tag: int, vr: str, text: str) -> DataElement:
    """A data element of ``vr`` holding the string form ``text``.

    Values are not validated (an index value is returned as stored); one that
    cannot be represented in its VR at all is returned zero-length.
    """
    from pydicom import config
    from pydicom.dataelem import DataElement
    from pydicom.sequence import Sequence

    value: Any = None
    parts = [p.strip() for p in text.split("\\") if p.strip()]
    try:
        if vr == "SQ":
            value = Sequence()
        elif vr in _BYTES_VRS or not parts:
            value = None if vr not in _CHARSET_VRS else text
        elif vr == "AT":
            value = [int(p, 16) for p in parts]
        elif vr in ("FL", "FD"):
            value = [float(p) for p in parts]
        elif vr in _BINARY_VRS:
            value = [int(p) for p in parts]
        elif vr in _CHARSET_VRS:
            value = text
        else:
            value = "".join(c if c.isascii() else "?" for c in text)
        if isinstance(value, list) and len(value) == 1:
            value = value[0]
        return DataElement(tag, vr, value, validation_mode=config.IGNORE)
    except (ValueError, TypeError, OverflowError):
        return DataElement(tag, vr, None, validation_mode=config.IGNORE)


def _dictionary_vr(keyword: str) -> str:
    """The dictionary VR of a keyword (first choice if ambiguous), or "UN"."""
    from pydicom.datadict import tag_for_keyword

    tag = tag_for_keyword(keyword)
    if tag is None:
        return "UN"
    return _vr_of(tag, None)


def _check_level(level: str) -> str:
    """Return ``level`` if it is one of :data:`LEVELS`, else raise ValueError."""
    if level not in LEVELS:
        raise ValueError(f"unknown Query/Retrieve level {level!r}")
    return level

