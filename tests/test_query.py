"""Tests for :mod:`sdcc_twisted.core.query`, the sans-I/O C-FIND/C-MOVE/C-GET core."""

from __future__ import annotations

import re
import struct
import sys
import time
import warnings
from collections.abc import Mapping
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom import Dataset
from pydicom.datadict import dictionary_VR
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset
from pydicom.sequence import Sequence
from twisted.trial.unittest import SynchronousTestCase

from sdcc_twisted.core import query as q
from sdcc_twisted.core.conformance import (
    EXPLICIT_VR_BIG_ENDIAN,
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
)
from sdcc_twisted.core.query import (
    LEVELS,
    PATIENT_ROOT,
    STUDY_ROOT,
    UNIQUE_KEYS,
    Query,
    QueryError,
    matches,
    matches_all,
    parse_identifier,
    response_identifier,
    retrieve_keys,
)
from sdcc_twisted.core.records import INDEX_ATTRIBUTES

#: (transfer syntax, implicit VR, little endian) of the three base encodings.
ENCODINGS = (
    (IMPLICIT_VR_LITTLE_ENDIAN, True, True),
    (EXPLICIT_VR_LITTLE_ENDIAN, False, True),
    (EXPLICIT_VR_BIG_ENDIAN, False, False),
)
ILE = IMPLICIT_VR_LITTLE_ENDIAN

#: One row of a matching table: (keyword, key value, attribute value or None
#: for an absent attribute, expected result, what the row shows).
Row = tuple[str, str, "str | None", bool, str]


# -- helpers --------------------------------------------------------------------
def make_query(level: str, model: str = PATIENT_ROOT, charset: str | None = None,
               vrs: Mapping[str, str] | None = None, **keys: str) -> Query:
    """A Query built directly, VRs from pydicom's dictionary."""
    all_vrs = {k: dictionary_VR(k) for k in keys}
    all_vrs.update(vrs or {})
    return Query(model=model, level=level, keys=dict(keys), vrs=all_vrs,
                 charset=charset)


def encode(ds: Dataset, implicit: bool, little: bool) -> bytes:
    """Encode a data set alone (no meta) with pydicom."""
    fp = DicomBytesIO()
    fp.is_little_endian = little
    fp.is_implicit_VR = implicit
    write_dataset(fp, ds)
    return fp.getvalue()


def decode(data: bytes, implicit: bool, little: bool) -> Dataset:
    """Decode a data set with pydicom, every element converted."""
    ds = read_dataset(DicomBytesIO(data), implicit, little)
    for elem in ds:
        pass
    return ds


def identifier(**elements: Any) -> Dataset:
    """A data set with the given keyword = value elements (invalid allowed)."""
    ds = Dataset()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)   # e.g. DA "2020*"
        for keyword, value in elements.items():
            setattr(ds, keyword, value)
    return ds


def explicit_element(tag: int, vr: bytes, value: bytes) -> bytes:
    """One Explicit VR Little Endian element with a 16-bit length."""
    return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr, len(value)) + value


class TableMixin:
    """Runs a matching table and reports every row that fails."""

    def check_table(self, level: str, rows: list[Row],
                    model: str = PATIENT_ROOT) -> None:
        """Assert ``matches`` gives the expected result for every row."""
        failures = []
        for keyword, key, attribute, expected, why in rows:
            query = make_query(level, model, **{keyword: key})
            attributes = {} if attribute is None else {keyword: attribute}
            got = matches(query, level, attributes)
            if got is not expected:
                failures.append(f"{level} {keyword}={key!r} vs {attribute!r}: "
                                f"got {got}, want {expected} ({why})")
        self.assertEqual(failures, [])  # type: ignore[attr-defined]


# -- matching, level by level (PS3.4 C.2.2.2) -----------------------------------
PATIENT_ROWS: list[Row] = [
    # single value matching (C.2.2.2.1)
    ("PatientID", "P1", "P1", True, "single value, equal"),
    ("PatientID", "P1", "P2", False, "single value, different"),
    ("PatientID", "P1", "P10", False, "single value is not a prefix match"),
    ("PatientID", "p1", "P1", False, "LO is case-sensitive"),
    ("PatientID", " P1 ", "P1", True, "LO leading/trailing spaces insignificant"),
    ("PatientSex", "F", "F", True, "CS single value"),
    ("PatientSex", "F", "M", False, "CS single value, different"),
    ("PatientSex", "f", "F", False, "CS is case-sensitive"),
    # universal matching (C.2.2.2.3)
    ("PatientID", "", "P1", True, "empty key is universal"),
    ("PatientName", "", None, True, "empty key matches an absent attribute"),
    ("PatientName", "*", None, True, "'*' alone matches an absent attribute"),
    ("PatientName", "*", "", True, "'*' alone matches an empty attribute"),
    ("PatientName", "**", "Doe^Jane", True, "only stars is universal"),
    ("PatientBirthDate", "*", None, True, "'*' is universal for DA too"),
    # wild card matching (C.2.2.2.4)
    ("PatientName", "Sm*", "Smith^John", True, "trailing star"),
    ("PatientName", "*ith*", "Smith^John", True, "star at both ends"),
    ("PatientName", "S*h^J?hn", "Smith^John", True, "star and ? in the middle"),
    ("PatientName", "Sm?th^John", "Smith^John", True, "? matches one character"),
    ("PatientName", "Sm??th^John", "Smith^John", False, "? is exactly one char"),
    ("PatientName", "Sm?th", "Smith^John", False, "pattern must cover the value"),
    ("PatientName", "Smith^*", "Smith", True, "PN pattern vs absent components"),
    ("PatientName", "*^J*", "Smith", False, "padding adds empty components only"),
    ("PatientName", "D??*", "Do", False, "no padding without ^ in the key"),
    ("PatientName", "Smith^J*", "Smith^John=スミス", True, "first group"),
    ("PatientName", "Sm*", None, False, "wild card never matches absent"),
    ("PatientName", "?*", "", False, "wild card never matches empty"),
    ("PatientID", "P*", "PX1", True, "LO wild card"),
    ("PatientID", "P?", "P12", False, "? on LO is one character"),
    ("PatientID", "A.B*", "AxB1", False, "'.' is literal, not a regex dot"),
    ("PatientID", "A.B*", "A.B1", True, "'.' literal matches itself"),
    ("PatientID", "[x]?", "[x]1", True, "brackets are literal"),
    ("PatientID", "[x]?", "x1", False, "brackets are not a character class"),
    ("PatientID", "(1)+*", "(1)+2", True, "parentheses and plus literal"),
    ("PatientID", "^a$*", "^a$b", True, "anchors are literal"),
    ("PatientID", "50%", "50%", True, "percent is literal (no SQL LIKE)"),
    ("PatientID", "50_", "501", False, "underscore is literal (no SQL LIKE)"),
    ("PatientID", "a\\\\b*", "a", True, "empty list items are dropped"),
    ("PatientSex", "?", "O", True, "CS allows wild cards"),
    ("PatientName", "O'Brien*", "O'Brien^Pat", True, "quote is literal"),
    # PN rules (case-insensitive, component groups)
    ("PatientName", "smith^john", "SMITH^JOHN", True, "PN single value ignores case"),
    ("PatientName", "müller*", "MÜLLER^HANS", True, "PN wild card ignores case"),
    ("PatientName", "Smith^John^^", "Smith^John", True, "trailing ^ ignored"),
    ("PatientName", "Smith^John", "Smith^John^^^", True, "stored trailing ^"),
    ("PatientName", "Yamada^Tarou", "Yamada^Tarou=山田^太郎", True,
     "key matches one component group"),
    ("PatientName", "山田^太郎", "Yamada^Tarou=山田^太郎", True,
     "ideographic group alone"),
    ("PatientName", "Yamada^Tarou=山田^太郎", "Yamada^Tarou=山田^太郎", True,
     "whole multi-group name"),
    ("PatientName", "Yamada", "Yamada^Tarou", False, "single value is whole name"),
    # range matching (C.2.2.2.5), DA
    ("PatientBirthDate", "19800101", "19800101", True, "DA single value"),
    ("PatientBirthDate", "19800101", "19800102", False, "DA single, different"),
    ("PatientBirthDate", "19800101-19801231", "19800101", True, "lower bound incl."),
    ("PatientBirthDate", "19800101-19801231", "19801231", True, "upper bound incl."),
    ("PatientBirthDate", "19800101-19801231", "19810101", False, "after range"),
    ("PatientBirthDate", "19800101-19801231", "19791231", False, "before range"),
    ("PatientBirthDate", "-19800101", "19800101", True, "'-d' includes d"),
    ("PatientBirthDate", "-19800101", "19800102", False, "'-d' excludes later"),
    ("PatientBirthDate", "19800101-", "20240101", True, "'d-' includes later"),
    ("PatientBirthDate", "19800101-", "19791231", False, "'d-' excludes earlier"),
    ("PatientBirthDate", "19800101", "1980.01.01", True, "legacy stored date"),
    ("PatientBirthDate", "1980*", "19800101", False, "no wild cards on DA"),
    ("PatientBirthDate", "19800101-", None, False, "range never matches absent"),
    # multiple values in a key
    ("PatientSex", "M\\F", "F", True, "any value of the key may match"),
    ("PatientSex", "M\\F", "O", False, "no value of the key matches"),
    # missing attribute
    ("PatientName", "Smith", None, False, "absent attribute, single value"),
    ("PatientID", "P1", "", False, "empty attribute, single value"),
    # keys the index does not hold: return keys only
    ("PatientBirthTime", "1200", None, True, "not indexed: no matching"),
    ("OtherPatientIDs", "X*", None, True, "not indexed: no matching"),
    ("PatientAge", "030Y", None, True, "not indexed: no matching"),
    ("StudyDate", "20200101", None, True, "key of another level ignored"),
]

STUDY_ROWS: list[Row] = [
    # single value and list of UID matching (C.2.2.2.1, C.2.2.2.2)
    ("StudyInstanceUID", "1.2.3", "1.2.3", True, "UID single value"),
    ("StudyInstanceUID", "1.2.3", "1.2.30", False, "UID is not a prefix"),
    ("StudyInstanceUID", "1.2.3\\1.2.4", "1.2.4", True, "UID list, second"),
    ("StudyInstanceUID", "1.2.3\\1.2.4", "1.2.3", True, "UID list, first"),
    ("StudyInstanceUID", "1.2.3\\1.2.4", "1.2.5", False, "UID list, none"),
    ("StudyInstanceUID", "1.2.3\x00", "1.2.3", True, "UI NUL padding"),
    ("StudyInstanceUID", "1.2.*", "1.2.3", False, "no wild cards on UI"),
    ("StudyInstanceUID", "1.2.?", "1.2.3", False, "no ? on UI"),
    ("StudyInstanceUID", "*", "1.2.3", True, "'*' alone is universal on UI"),
    ("StudyInstanceUID", "", "1.2.3", True, "universal UI"),
    # DA
    ("StudyDate", "20200101-20201231", "20200615", True, "inside range"),
    ("StudyDate", "20200101-20201231", "20200101", True, "lower bound incl."),
    ("StudyDate", "20200101-20201231", "20201231", True, "upper bound incl."),
    ("StudyDate", "20200101-20201231", "20210101", False, "after range"),
    ("StudyDate", "-20201231", "19991231", True, "open lower bound"),
    ("StudyDate", "20200101-", "20991231", True, "open upper bound"),
    ("StudyDate", "20201231-20200101", "20200615", False, "reversed range"),
    ("StudyDate", "20200101", None, False, "absent date, single value"),
    ("StudyDate", "2020-01-01", "20200101", False, "not a DA range"),
    # TM, partial times
    ("StudyTime", "0800-1200", "0800", True, "lower bound incl."),
    ("StudyTime", "0800-1200", "1200", True, "upper bound incl."),
    ("StudyTime", "0800-1200", "120059", True, "upper bound covers its minute"),
    ("StudyTime", "0800-1200", "120059.999999", True, "up to its last µs"),
    ("StudyTime", "0800-1200", "1201", False, "after the upper minute"),
    ("StudyTime", "0800-1200", "075959", False, "before lower bound"),
    ("StudyTime", "08-12", "125959.999999", True, "hour bounds: whole hours"),
    ("StudyTime", "08-12", "13", False, "after the upper hour"),
    ("StudyTime", "08-12", "07", False, "before the lower hour"),
    ("StudyTime", "-0830", "083059", True, "'-t' includes t's minute"),
    ("StudyTime", "-0830", "0831", False, "'-t' excludes later"),
    ("StudyTime", "083015.123-", "083015.123", True, "fraction lower bound"),
    ("StudyTime", "083015.123-", "083015.1235", True, "more precise stored"),
    ("StudyTime", "083015.123-", "083015.122999", False, "just before"),
    ("StudyTime", "0830", "083015.5", True, "single partial time is a period"),
    ("StudyTime", "0830", "0831", False, "single partial time, outside"),
    ("StudyTime", "08", "0859", True, "single hour covers its minutes"),
    ("StudyTime", "0830-0831", "08:30:15", True, "legacy stored time"),
    ("StudyTime", "0800-", "", False, "empty time never in a range"),
    ("StudyTime", "0800-", "25", False, "invalid stored time"),
    # SH, LO, PN
    ("AccessionNumber", "ACC*", "ACC123", True, "SH wild card"),
    ("AccessionNumber", "acc123", "ACC123", False, "SH case-sensitive"),
    ("AccessionNumber", "A1", None, False, "absent accession number"),
    ("StudyID", "42", "42", True, "SH single value"),
    ("StudyID", "42", "420", False, "SH not a prefix"),
    ("StudyDescription", "*Chest*", "CT Chest w/o", True, "LO contains"),
    ("StudyDescription", "*chest*", "CT Chest w/o", False, "LO case-sensitive"),
    ("StudyDescription", "CT ?hest*", "CT Chest w/o", True, "LO ? in the middle"),
    ("StudyDescription", "CT*", "CT\\MR", True, "multi-valued stored text"),
    ("ReferringPhysicianName", "jones*", "JONES^BOB", True, "PN ignores case"),
    ("ReferringPhysicianName", "Jones^Bob", "Smith^Bob", False, "PN different"),
    # keys the index does not hold
    ("ModalitiesInStudy", "CT", "CT\\MR", True, "computed: any modality of the study"),
    ("ModalitiesInStudy", "CT", "MR", False, "computed: a CT filter leaves MR out"),
    ("ModalitiesInStudy", "CT\\PT", "MR\\PT", True, "computed: any key value"),
    ("StudyComments", "x", None, True, "not indexed: return key only"),
    ("NumberOfStudyRelatedInstances", "3", "3", True, "computed count"),
    ("NumberOfStudyRelatedInstances", "3", "03", True, "computed count, IS by value"),
    ("NumberOfStudyRelatedInstances", "3", "4", False, "computed count differs"),
    ("Modality", "CT", None, True, "series key ignored at study level"),
]

SERIES_ROWS: list[Row] = [
    ("SeriesInstanceUID", "1.2.3.4", "1.2.3.4", True, "UID single value"),
    ("SeriesInstanceUID", "1.2.3.4\\1.2.3.5", "1.2.3.5", True, "UID list"),
    ("SeriesInstanceUID", "1.2.3.4\\1.2.3.5", "1.2.3.6", False, "UID list, none"),
    ("Modality", "CT", "CT", True, "CS single value"),
    ("Modality", "CT", "ct", False, "CS case-sensitive"),
    ("Modality", "C?", "CT", True, "CS ? wild card"),
    ("Modality", "*T", "CT", True, "CS leading star"),
    ("Modality", "PT", "CT\\PT", True, "any stored value may match"),
    ("Modality", "MR", "CT\\PT", False, "no stored value matches"),
    ("Modality", "MR\\PT", "CT\\PT", True, "key list vs stored list"),
    ("Modality", "CT", None, False, "absent modality"),
    ("SeriesNumber", "7", "7", True, "IS single value"),
    ("SeriesNumber", "7", "007", True, "IS compares as a number"),
    ("SeriesNumber", "+7", "7", True, "IS sign"),
    ("SeriesNumber", "7", "8", False, "IS different"),
    ("SeriesNumber", "1*", "10", False, "no wild cards on IS"),
    ("SeriesDescription", "AX*", "AX T2", True, "LO wild card"),
    ("SeriesDescription", "AX T2", "AX T2", True, "LO with inner space"),
    ("SeriesDescription", "AX  T2", "AX T2", False, "inner spaces significant"),
    ("SeriesDescription", "*", None, True, "'*' is universal"),
    ("SeriesDate", "20240101-20240131", "20240115", True, "DA range"),
    ("SeriesDate", "20240101", "20240102", False, "DA single"),
    ("SeriesTime", "1015", "101559.9", True, "TM single, minute precision"),
    ("SeriesTime", "101500-101530", "101530.5", True, "second upper bound"),
    ("SeriesTime", "101500-101530", "101531", False, "after second bound"),
    ("BodyPartExamined", "CHEST", None, True, "not indexed: return key only"),
    ("ProtocolName", "x*", None, True, "not indexed: return key only"),
    ("SOPInstanceUID", "9.9", None, True, "image key ignored at series level"),
]

IMAGE_ROWS: list[Row] = [
    ("SOPInstanceUID", "1.2.3.4.5", "1.2.3.4.5", True, "UID single value"),
    ("SOPInstanceUID", "1.2.3.4.5\\1.2.3.4.6\\1.2.3.4.7", "1.2.3.4.7", True,
     "UID list of three"),
    ("SOPInstanceUID", "1.2.3.4.5", "1.2.3.4.6", False, "UID different"),
    ("SOPInstanceUID", "1.2.3.4.5", None, False, "absent UID"),
    ("SOPClassUID", "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.2",
     True, "SOP class single value"),
    ("SOPClassUID", "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.4",
     False, "SOP class different"),
    ("InstanceNumber", "12", "12", True, "IS single"),
    ("InstanceNumber", "12", "012", True, "IS as number"),
    ("InstanceNumber", "12", "", False, "empty instance number"),
    ("ContentDate", "20240101-", "20240102", True, "DA open range"),
    ("ContentDate", "-20231231", "20240102", False, "DA open range, outside"),
    ("ContentTime", "1530", "153000.000", True, "TM minute vs fraction"),
    ("ContentTime", "153000.5-153001", "153000.4", False, "below fraction"),
    ("ContentTime", "153000.5-153001", "153001.999", True, "upper second incl."),
    ("ImageType", "ORIGINAL*", None, True, "not indexed: return key only"),
    ("Rows", "512", None, True, "binary key not indexed: return key only"),
    ("PatientName", "X", None, True, "patient key ignored at image level"),
]


class MatchLevelTests(TableMixin, SynchronousTestCase):
    """``matches`` at every level, table by table (PS3.4 C.2.2.2)."""

    def test_patient_level(self) -> None:
        """PATIENT keys: single, universal, wild card, PN, DA range, missing."""
        self.check_table("PATIENT", PATIENT_ROWS)

    def test_study_level(self) -> None:
        """STUDY keys: UID lists, DA and partial TM ranges, SH/LO/PN rules."""
        self.check_table("STUDY", STUDY_ROWS)

    def test_study_level_study_root(self) -> None:
        """The Study Root model matches the same study keys the same way."""
        self.check_table("STUDY", STUDY_ROWS, model=STUDY_ROOT)

    def test_series_level(self) -> None:
        """SERIES keys: CS wild cards, multi-valued values, IS numbers."""
        self.check_table("SERIES", SERIES_ROWS)

    def test_image_level(self) -> None:
        """IMAGE keys: UID lists, SOP class, IS, DA/TM ranges."""
        self.check_table("IMAGE", IMAGE_ROWS)

    def test_tables_cover_every_indexed_attribute(self) -> None:
        """Every attribute the index holds is exercised by its level's table."""
        tables = {"PATIENT": PATIENT_ROWS, "STUDY": STUDY_ROWS,
                  "SERIES": SERIES_ROWS, "IMAGE": IMAGE_ROWS}
        for level, attrs in INDEX_ATTRIBUTES.items():
            covered = {row[0] for row in tables[level]}
            self.assertEqual({kw for _, kw in attrs} - covered, set(), level)


class MatchRuleTests(SynchronousTestCase):
    """Matching rules that need more than one key or a custom query."""

    def test_all_keys_must_match(self) -> None:
        """An entity matches only when every matching key of its level does."""
        query = make_query("STUDY", PatientID="P1", StudyDate="20200101-",
                           AccessionNumber="A*")
        self.assertTrue(matches(query, "STUDY", {"StudyDate": "20200202",
                                                 "AccessionNumber": "A1"}))
        self.assertFalse(matches(query, "STUDY", {"StudyDate": "20200202",
                                                  "AccessionNumber": "B1"}))
        self.assertFalse(matches(query, "STUDY", {"StudyDate": "20191231",
                                                  "AccessionNumber": "A1"}))

    def test_no_keys_match_everything(self) -> None:
        """A query without matching keys for a level matches every entity."""
        query = make_query("IMAGE", PatientID="P1")
        for level in LEVELS[1:]:
            self.assertTrue(matches(query, level, {}))

    def test_patient_id_matched_at_patient_level_only(self) -> None:
        """PatientID belongs to the PATIENT level, not to STUDY."""
        query = make_query("STUDY", PatientID="P1")
        self.assertTrue(matches(query, "STUDY", {"PatientID": "P2"}))
        self.assertFalse(matches(query, "PATIENT", {"PatientID": "P2"}))

    def test_match_unknown_option(self) -> None:
        """match_unknown lets absent values match non-unique keys (C.2.2.1.2)."""
        query = make_query("STUDY", StudyDate="20200101", StudyInstanceUID="1.2")
        attrs = {"StudyInstanceUID": "1.2"}
        self.assertFalse(matches(query, "STUDY", attrs))
        self.assertTrue(matches(query, "STUDY", attrs, match_unknown=True))
        self.assertFalse(matches(query, "STUDY", {"StudyDate": "20200101"},
                                 match_unknown=True),
                         "a unique key never matches an unknown value")
        self.assertFalse(matches(query, "STUDY", {"StudyInstanceUID": "1.2",
                                                  "StudyDate": "20210101"},
                                 match_unknown=True),
                         "a known value still has to match")

    def test_datetime_ranges(self) -> None:
        """DT single values and ranges, partial values, UTC offsets ignored.

        No DT attribute is indexed today, so the VR is declared in Query.vrs
        for an indexed keyword; ``matches`` uses the query's VRs.
        """
        rows = [
            ("20200101120000-20200101130000", "20200101123000", True),
            ("20200101120000-20200101130000", "20200101130000.5", True),
            ("20200101120000-20200101130000", "20200101130001", False),
            ("2020-2021", "20211231235959", True),
            ("2020-2021", "2022", False),
            ("202002-", "20200201", True),
            ("202002-", "20200131", False),
            ("-202002", "20200229235959", True),
            ("-202002", "20200301", False),
            ("-2020", "20201231", True),
            ("2020", "20200615101010", True),
            ("2020", "2021", False),
            ("20200101", "20200101235959.999999", True),
            ("20200101120000+0100", "20200101120000", True),
            ("20200101120000-0500", "20200101120000", True),
            ("20200101-0500", "20200101120000", True),
            ("20200101-", "20200101120000-0500", True),
            ("2020*", "20200101", False),
            ("20201301", "20201301", False),
        ]
        failures = []
        for key, stored, expected in rows:
            query = make_query("IMAGE", vrs={"ContentDate": "DT"}, ContentDate=key)
            got = matches(query, "IMAGE", {"ContentDate": stored})
            if got is not expected:
                failures.append((key, stored, got))
        self.assertEqual(failures, [])

    def test_query_vrs_used(self) -> None:
        """Wild cards follow the key's VR from Query.vrs, not the keyword."""
        query = make_query("STUDY", vrs={"StudyID": "UI"}, StudyID="4*")
        self.assertFalse(matches(query, "STUDY", {"StudyID": "42"}))
        query = make_query("STUDY", StudyID="4*")
        self.assertTrue(matches(query, "STUDY", {"StudyID": "42"}))

    def test_matches_all_walks_the_hierarchy(self) -> None:
        """matches_all checks every level from PATIENT down (C.4.1.3.1.1)."""
        query = make_query("SERIES", STUDY_ROOT, PatientName="Doe*",
                           StudyInstanceUID="1.2", Modality="CT")
        self.assertEqual(query.hierarchy, ("PATIENT", "STUDY", "SERIES"))
        entities = {"PATIENT": {"PatientName": "Doe^Jane"},
                    "STUDY": {"StudyInstanceUID": "1.2"},
                    "SERIES": {"Modality": "CT"}}
        self.assertTrue(matches_all(query, entities))
        self.assertFalse(matches_all(query, {**entities,
                                             "PATIENT": {"PatientName": "Roe"}}))
        self.assertFalse(matches_all(query, {**entities,
                                             "STUDY": {"StudyInstanceUID": "1.3"}}))
        self.assertFalse(matches_all(query, {"STUDY": {"StudyInstanceUID": "1.2"},
                                             "SERIES": {"Modality": "CT"}}))

    def test_unknown_level_rejected(self) -> None:
        """A level outside LEVELS is a programming error (ValueError)."""
        query = make_query("STUDY")
        self.assertRaises(ValueError, matches, query, "FRAME", {})
        self.assertRaises(ValueError, query.level_keys, "FRAME")

    @settings(max_examples=500, deadline=None, database=None)
    @given(st.text(alphabet="ab*?", min_size=1, max_size=8),
           st.text(alphabet="ab*?", max_size=8))
    def test_wildcards_agree_with_regex(self, key: str, value: str) -> None:
        """Wild card matching agrees with a regex model of "*" and "?"."""
        regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c)
                        for c in key)

        def model(text: str) -> bool:
            if not key.strip("*"):
                return True                    # universal, even for ""
            return bool(value) and re.fullmatch(regex, text) is not None

        for keyword, level in (("StudyDescription", "STUDY"),
                               ("Modality", "SERIES"), ("PatientName", "PATIENT")):
            query = make_query(level, **{keyword: key})
            self.assertEqual(matches(query, level, {keyword: value}), model(value),
                             (keyword, key, value))

    def test_many_stars_stay_fast(self) -> None:
        """A key full of "*" against a long value does not backtrack for ever."""
        query = make_query("STUDY", StudyDescription="*a" * 30 + "*b")
        start = time.monotonic()
        self.assertFalse(matches(query, "STUDY", {"StudyDescription": "a" * 4000}))
        self.assertLess(time.monotonic() - start, 5.0)

    @settings(max_examples=200, deadline=None, database=None)
    @given(st.text(alphabet=st.characters(blacklist_characters="*?\\=^",
                                          blacklist_categories=("Cs", "Cc", "Zs")),
                   min_size=1, max_size=20),
           st.integers(min_value=0, max_value=20))
    def test_text_matches_itself_and_its_prefix(self, text: str, cut: int) -> None:
        """Any LO/PN value matches itself and "<prefix>*" of itself."""
        prefix = text[:cut] + "*"
        for keyword in ("StudyDescription", "ReferringPhysicianName"):
            for key in (text, prefix):
                query = make_query("STUDY", **{keyword: key})
                self.assertTrue(matches(query, "STUDY", {keyword: text}),
                                (keyword, key, text))


class QueryMethodTests(SynchronousTestCase):
    """``Query.level_keys``, ``Query.unique_values``, ``Query.hierarchy``."""

    def test_level_keys(self) -> None:
        """level_keys keeps the keys the index holds at that level."""
        query = make_query("SERIES", PatientID="P1", PatientName="A*",
                           PatientAge="", StudyInstanceUID="1.2", StudyDate="",
                           Modality="CT", BodyPartExamined="")
        self.assertEqual(query.level_keys("PATIENT"),
                         {"PatientID": "P1", "PatientName": "A*"})
        self.assertEqual(query.level_keys("STUDY"),
                         {"StudyInstanceUID": "1.2", "StudyDate": ""})
        self.assertEqual(query.level_keys("SERIES"), {"Modality": "CT"})
        self.assertEqual(query.level_keys("IMAGE"), {})

    def test_unique_values(self) -> None:
        """unique_values gives single values and UID lists, else None."""
        cases = [
            ("STUDY", {"StudyInstanceUID": "1.2.3"}, ["1.2.3"]),
            ("STUDY", {"StudyInstanceUID": "1.2.3\\1.2.4"}, ["1.2.3", "1.2.4"]),
            ("STUDY", {"StudyInstanceUID": "1.2.3\\1.2.3"}, ["1.2.3"]),
            ("STUDY", {"StudyInstanceUID": ""}, None),
            ("STUDY", {"StudyInstanceUID": "*"}, None),
            ("STUDY", {"StudyInstanceUID": "1.2.*"}, None),
            ("STUDY", {}, None),
            ("PATIENT", {"PatientID": " P1 "}, ["P1"]),
            ("PATIENT", {"PatientID": "P?"}, None),
            ("IMAGE", {"SOPInstanceUID": "9.8\\9.7"}, ["9.8", "9.7"]),
            ("SERIES", {"SeriesInstanceUID": "5.6"}, ["5.6"]),
        ]
        for level, keys, expected in cases:
            query = make_query("IMAGE", **keys)
            self.assertEqual(query.unique_values(level), expected, (level, keys))

    def test_unique_values_agree_with_matches(self) -> None:
        """An entity outside unique_values never matches; one inside may."""
        query = make_query("IMAGE", SOPInstanceUID="1.1\\1.2")
        values = query.unique_values("IMAGE")
        self.assertIsNotNone(values)
        for uid in ("1.1", "1.2", "1.3", "1.10"):
            self.assertEqual(matches(query, "IMAGE", {"SOPInstanceUID": uid}),
                             uid in (values or []))

    def test_hierarchy(self) -> None:
        """hierarchy lists PATIENT down to the query level."""
        self.assertEqual(make_query("PATIENT").hierarchy, ("PATIENT",))
        self.assertEqual(make_query("IMAGE", STUDY_ROOT).hierarchy, LEVELS)


# -- parse_identifier (PS3.4 C.4.1.1.3.1) ---------------------------------------
class ParseIdentifierTests(SynchronousTestCase):
    """Decoding C-FIND identifiers in the three encodings, and their errors."""

    def sample(self) -> Dataset:
        """A Patient Root SERIES-level identifier with assorted keys."""
        ds = identifier(
            SpecificCharacterSet="ISO_IR 100",
            QueryRetrieveLevel="SERIES",
            PatientID="P1",
            PatientName="Müller^Hans",
            StudyInstanceUID="1.2.3",
            StudyDate="20200101-20201231",
            ModalitiesInStudy=["CT", "MR"],
            Modality="CT",
            SeriesNumber="",
            SeriesDescription="AX*",
            Rows=512,
            ReferencedStudySequence=Sequence([identifier(
                ReferencedSOPInstanceUID="9.9")]),
        )
        ds.add_new(0x00091010, "LO", "private")
        return ds

    def test_three_encodings(self) -> None:
        """Implicit VR LE, Explicit VR LE and BE decode to the same Query."""
        expected_keys = {
            "PatientID": "P1", "PatientName": "Müller^Hans",
            "StudyInstanceUID": "1.2.3", "StudyDate": "20200101-20201231",
            "ModalitiesInStudy": "CT\\MR", "Modality": "CT", "SeriesNumber": "",
            "SeriesDescription": "AX*", "Rows": "512",
        }
        for ts, implicit, little in ENCODINGS:
            query = parse_identifier(encode(self.sample(), implicit, little), ts,
                                     PATIENT_ROOT)
            self.assertEqual(query.model, PATIENT_ROOT)
            self.assertEqual(query.level, "SERIES")
            self.assertEqual(query.keys, expected_keys, ts)
            self.assertEqual(query.charset, "ISO_IR 100")
            self.assertEqual(query.vrs["PatientName"], "PN")
            self.assertEqual(query.vrs["StudyDate"], "DA")
            self.assertEqual(query.vrs["Rows"], "US")
            self.assertEqual(set(query.vrs), set(query.keys))

    def test_character_sets(self) -> None:
        """PN and text are decoded with the Specific Character Set."""
        name = "Yamada^Tarou=山田^太郎=やまだ^たろう"
        cases = [
            (["", "ISO 2022 IR 87"], name, "\\ISO 2022 IR 87"),
            ("ISO_IR 192", "Müller^Hans=ミュラー", "ISO_IR 192"),
            ("ISO_IR 100", "Müller^Hans", "ISO_IR 100"),
            (None, "Doe^John", None),
        ]
        for charset, pn, expected_charset in cases:
            for ts, implicit, little in ENCODINGS:
                ds = identifier(QueryRetrieveLevel="PATIENT", PatientName=pn,
                                StudyDescription="")
                if charset is not None:
                    ds.SpecificCharacterSet = charset
                query = parse_identifier(encode(ds, implicit, little), ts,
                                         PATIENT_ROOT)
                self.assertEqual(query.keys["PatientName"], pn)
                self.assertEqual(query.charset, expected_charset)
                self.assertNotIn("SpecificCharacterSet", query.keys)
                self.assertNotIn("QueryRetrieveLevel", query.keys)

    def test_padding_stripped(self) -> None:
        """Space and NUL padding is removed from the string form (PS3.5 6.2)."""
        data = (explicit_element(0x00080050, b"SH", b" A1 ")
                + explicit_element(0x00080052, b"CS", b"STUDY ")
                + explicit_element(0x00081030, b"LO", b"CT\\MR ")
                + explicit_element(0x00100010, b"PN", b"Doe^Jo")
                + explicit_element(0x0020000D, b"UI", b"1.2.3\x00"))
        query = parse_identifier(data, EXPLICIT_VR_LITTLE_ENDIAN, STUDY_ROOT)
        self.assertEqual(query.level, "STUDY")
        self.assertEqual(query.keys, {"AccessionNumber": "A1",
                                      "StudyDescription": "CT\\MR",
                                      "PatientName": "Doe^Jo",
                                      "StudyInstanceUID": "1.2.3"})

    def test_un_vr_uses_dictionary(self) -> None:
        """An explicit UN element of a known tag is decoded by its real VR."""
        data = (struct.pack("<HH2sHL", 0x0008, 0x0050, b"UN", 0, 4) + b"ACC1"
                + explicit_element(0x00080052, b"CS", b"STUDY "))
        query = parse_identifier(data, EXPLICIT_VR_LITTLE_ENDIAN, STUDY_ROOT)
        self.assertEqual(query.keys, {"AccessionNumber": "ACC1"})
        self.assertEqual(query.vrs, {"AccessionNumber": "SH"})

    def test_then_match(self) -> None:
        """A parsed identifier drives matches end to end."""
        data = encode(self.sample(), True, True)
        query = parse_identifier(data, ILE, PATIENT_ROOT)
        self.assertTrue(matches(query, "PATIENT", {"PatientID": "P1",
                                                   "PatientName": "MÜLLER^HANS"}))
        self.assertTrue(matches(query, "SERIES", {"Modality": "CT",
                                                  "SeriesDescription": "AX T1"}))
        self.assertFalse(matches(query, "SERIES", {"Modality": "MR",
                                                   "SeriesDescription": "AX T1"}))
        self.assertEqual(query.unique_values("STUDY"), ["1.2.3"])

    def assertQueryError(self, status: int, needle: str, data: bytes,
                         model: str = PATIENT_ROOT, ts: str = ILE,
                         parse: Any = parse_identifier) -> QueryError:
        """Assert parsing raises QueryError(status) whose comment has needle."""
        exc = self.assertRaises(QueryError, parse, data, ts, model)
        self.assertEqual(exc.status, status, exc.comment)
        self.assertIn(needle, exc.comment)
        self.assertLessEqual(len(exc.comment), 64)
        return exc

    def test_garbage_bytes(self) -> None:
        """Bytes that are no data set give 0xC000."""
        for data in (b"garbage!", b"\xff" * 13, b"\x08\x00\x52\x00\xff\xff\xff\x7f",
                     encode(self.sample(), True, True)[:-3]):
            for ts, _, _ in ENCODINGS:
                self.assertQueryError(0xC000, "", data, ts=ts)

    def test_wrong_encoding(self) -> None:
        """An identifier in another encoding than the context's gives 0xC000."""
        data = encode(identifier(QueryRetrieveLevel="PATIENT", PatientID="P1"),
                      False, True)
        self.assertQueryError(0xC000, "", data, ts=EXPLICIT_VR_BIG_ENDIAN)

    def test_missing_level(self) -> None:
        """No Query/Retrieve Level (or no identifier at all) gives 0xA900."""
        self.assertQueryError(0xA900, "QueryRetrieveLevel",
                              encode(identifier(PatientID="P1"), True, True))
        self.assertQueryError(0xA900, "QueryRetrieveLevel", b"")

    def test_bad_level(self) -> None:
        """An unknown or empty level, or lower case, gives 0xA900."""
        for level in ("FRAME", "", "study", "STUDY\\SERIES"):
            ds = identifier(QueryRetrieveLevel=level, PatientID="P1")
            self.assertQueryError(0xA900, "QueryRetrieveLevel",
                                  encode(ds, True, True))

    def test_patient_level_in_study_root(self) -> None:
        """PATIENT is not a level of the Study Root model: 0xA900."""
        ds = identifier(QueryRetrieveLevel="PATIENT", PatientName="*")
        exc = self.assertQueryError(0xA900, "PATIENT", encode(ds, True, True),
                                    model=STUDY_ROOT)
        self.assertIn("Study Root", exc.comment)
        query = parse_identifier(encode(ds, True, True), ILE, PATIENT_ROOT)
        self.assertEqual(query.level, "PATIENT")

    def test_missing_higher_unique_keys_patient_root(self) -> None:
        """Patient Root needs a single value for each higher Unique Key."""
        cases = [
            (dict(QueryRetrieveLevel="STUDY"), "PatientID"),
            (dict(QueryRetrieveLevel="STUDY", PatientID=""), "PatientID"),
            (dict(QueryRetrieveLevel="STUDY", PatientID="P*"), "PatientID"),
            (dict(QueryRetrieveLevel="STUDY", PatientID="P1\\P2"), "PatientID"),
            (dict(QueryRetrieveLevel="SERIES", PatientID="P1"), "StudyInstanceUID"),
            (dict(QueryRetrieveLevel="SERIES", StudyInstanceUID="1.2"), "PatientID"),
            (dict(QueryRetrieveLevel="SERIES", PatientID="P1",
                  StudyInstanceUID="1.2\\1.3"), "StudyInstanceUID"),
            (dict(QueryRetrieveLevel="IMAGE", PatientID="P1",
                  StudyInstanceUID="1.2"), "SeriesInstanceUID"),
            (dict(QueryRetrieveLevel="IMAGE", PatientID="P1",
                  SeriesInstanceUID="1.2.3"), "StudyInstanceUID"),
        ]
        for keys, keyword in cases:
            self.assertQueryError(0xA900, keyword, encode(identifier(**keys),
                                                          True, True))

    def test_missing_higher_unique_keys_study_root(self) -> None:
        """Study Root needs Study (and Series) UIDs, never the Patient ID."""
        cases = [
            (dict(QueryRetrieveLevel="SERIES"), "StudyInstanceUID"),
            (dict(QueryRetrieveLevel="IMAGE", StudyInstanceUID="1.2"),
             "SeriesInstanceUID"),
            (dict(QueryRetrieveLevel="IMAGE", SeriesInstanceUID="1.2.3"),
             "StudyInstanceUID"),
        ]
        for keys, keyword in cases:
            self.assertQueryError(0xA900, keyword,
                                  encode(identifier(**keys), True, True),
                                  model=STUDY_ROOT)
        for keys in (dict(QueryRetrieveLevel="STUDY"),
                     dict(QueryRetrieveLevel="SERIES", StudyInstanceUID="1.2"),
                     dict(QueryRetrieveLevel="IMAGE", StudyInstanceUID="1.2",
                          SeriesInstanceUID="1.2.3", SOPInstanceUID="")):
            query = parse_identifier(encode(identifier(**keys), True, True), ILE,
                                     STUDY_ROOT)
            self.assertEqual(query.level, keys["QueryRetrieveLevel"])

    def test_valid_hierarchical_patient_root(self) -> None:
        """A Patient Root IMAGE query with all higher Unique Keys is accepted."""
        ds = identifier(QueryRetrieveLevel="IMAGE", PatientID="P1",
                        StudyInstanceUID="1.2", SeriesInstanceUID="1.2.3",
                        SOPInstanceUID="", InstanceNumber="")
        query = parse_identifier(encode(ds, False, False), EXPLICIT_VR_BIG_ENDIAN,
                                 PATIENT_ROOT)
        self.assertEqual(query.level, "IMAGE")
        self.assertEqual(query.unique_values("SERIES"), ["1.2.3"])
        self.assertIsNone(query.unique_values("IMAGE"))

    def test_invalid_date_time_keys(self) -> None:
        """Malformed DA/TM keys or reversed ranges give 0xA900."""
        for keyword, value in (("StudyDate", "2020*"), ("StudyDate", "20201301"),
                               ("StudyDate", "20201231-20200101"),
                               ("StudyTime", "2500"), ("StudyTime", "08-07"),
                               ("StudyTime", "0800-1200-1300")):
            ds = identifier(QueryRetrieveLevel="STUDY", **{keyword: value})
            self.assertQueryError(0xA900, keyword, encode(ds, True, True),
                                  model=STUDY_ROOT)
        ds = identifier(QueryRetrieveLevel="STUDY", StudyDate="*",
                        StudyTime="-", AcquisitionDate="junk")
        query = parse_identifier(encode(ds, True, True), ILE, STUDY_ROOT)
        self.assertEqual(query.keys["AcquisitionDate"], "junk",
                         "keys the index does not hold are not checked")

    def test_unknown_model(self) -> None:
        """An unknown model name is a programming error (ValueError)."""
        data = encode(identifier(QueryRetrieveLevel="STUDY"), True, True)
        self.assertRaises(ValueError, parse_identifier, data, ILE, "WORKLIST")

    @settings(max_examples=300, deadline=None, database=None)
    @given(st.binary(max_size=200))
    def test_fuzz_only_query_errors(self, data: bytes) -> None:
        """Arbitrary bytes raise QueryError or decode; nothing else escapes."""
        for ts, _, _ in ENCODINGS:
            try:
                parse_identifier(data, ts, PATIENT_ROOT)
            except QueryError as exc:
                self.assertIn(exc.status, (0xA900, 0xC000))
                self.assertLessEqual(len(exc.comment), 64)


# -- response_identifier (PS3.4 C.4.1.1.3.2) ------------------------------------
class ResponseIdentifierTests(SynchronousTestCase):
    """Encoding C-FIND-RSP identifiers and decoding them back."""

    ATTRS = {"PatientID": "P1", "PatientName": "Doe^Jane",
             "StudyInstanceUID": "1.2", "StudyDate": "20240102",
             "SeriesInstanceUID": "1.2.3", "Modality": "CT",
             "SeriesNumber": "4"}

    def test_round_trip_three_encodings(self) -> None:
        """Requested keys come back valued, unknown ones zero-length."""
        query = make_query("SERIES", PatientID="P1", StudyInstanceUID="1.2",
                           Modality="", SeriesNumber="", SeriesDescription="",
                           BodyPartExamined="", Rows="")
        for ts, implicit, little in ENCODINGS:
            data = response_identifier(query, "SERIES", self.ATTRS, ts)
            ds = decode(data, implicit, little)
            self.assertEqual(ds.QueryRetrieveLevel, "SERIES")
            self.assertEqual(ds.PatientID, "P1")
            self.assertEqual(ds.StudyInstanceUID, "1.2")
            self.assertEqual(ds.SeriesInstanceUID, "1.2.3", "own unique key")
            self.assertEqual(ds.Modality, "CT")
            self.assertEqual(ds.SeriesNumber, 4)
            for keyword in ("SeriesDescription", "BodyPartExamined", "Rows"):
                self.assertIn(keyword, ds)
                self.assertIn(ds[keyword].value, ("", None), keyword)
            self.assertNotIn("SpecificCharacterSet", ds)
            self.assertNotIn("PatientName", ds, "not requested")
            self.assertNotIn("StudyDate", ds, "not requested")

    def test_higher_unique_keys_added(self) -> None:
        """Unique keys of the higher levels are returned even unrequested."""
        cases = [
            (PATIENT_ROOT, "IMAGE", {"PatientID", "StudyInstanceUID",
                                     "SeriesInstanceUID", "SOPInstanceUID"}),
            (STUDY_ROOT, "IMAGE", {"StudyInstanceUID", "SeriesInstanceUID",
                                   "SOPInstanceUID"}),
            (STUDY_ROOT, "STUDY", {"StudyInstanceUID"}),
            (PATIENT_ROOT, "PATIENT", {"PatientID"}),
        ]
        attrs = {**self.ATTRS, "SOPInstanceUID": "1.2.3.4"}
        for model, level, expected in cases:
            query = make_query(level, model, InstanceNumber="")
            ds = decode(response_identifier(query, level, attrs, ILE), True, True)
            present = {elem.keyword for elem in ds} - {
                "QueryRetrieveLevel", "InstanceNumber"}
            self.assertEqual(present, expected, (model, level))
            for keyword in expected:
                self.assertEqual(ds[keyword].value, attrs[keyword])

    def test_extra_values(self) -> None:
        """extra fills computed keys, wins over attributes, is always added."""
        query = make_query("STUDY", STUDY_ROOT, NumberOfStudyRelatedInstances="",
                           StudyDate="", ModalitiesInStudy="")
        data = response_identifier(
            query, "STUDY", self.ATTRS, EXPLICIT_VR_LITTLE_ENDIAN,
            extra={"NumberOfStudyRelatedInstances": "12", "StudyDate": "20000101",
                   "ModalitiesInStudy": "CT\\MR", "RetrieveAETitle": "SDCC"})
        ds = decode(data, False, True)
        self.assertEqual(ds.NumberOfStudyRelatedInstances, 12)
        self.assertEqual(ds.StudyDate, "20000101")
        self.assertEqual(list(ds.ModalitiesInStudy), ["CT", "MR"])
        self.assertEqual(ds.RetrieveAETitle, "SDCC")

    def test_non_ascii_name_utf8(self) -> None:
        """A non-ASCII PatientName round-trips in ISO_IR 192 (UTF-8)."""
        for charset in ("ISO_IR 192", "ISO_IR 100", None):
            for ts, implicit, little in ENCODINGS:
                request = identifier(QueryRetrieveLevel="PATIENT",
                                     PatientName="Müller*", PatientID="")
                if charset:
                    request.SpecificCharacterSet = charset
                query = parse_identifier(encode(request, implicit, little), ts,
                                         PATIENT_ROOT)
                data = response_identifier(
                    query, "PATIENT", {"PatientName": "Müller^Hans",
                                       "PatientID": "P1"}, ts)
                ds = decode(data, implicit, little)
                self.assertEqual(ds.SpecificCharacterSet, "ISO_IR 192")
                self.assertEqual(str(ds.PatientName), "Müller^Hans")
                self.assertIn("Müller^Hans".encode("utf-8"), data)
                again = parse_identifier(data, ts, PATIENT_ROOT)
                self.assertEqual(again.keys["PatientName"], "Müller^Hans")

    def test_request_charset_echoed_for_ascii(self) -> None:
        """With ASCII values the request's Specific Character Set is kept."""
        for charset in ("ISO_IR 100", "\\ISO 2022 IR 87"):
            query = make_query("PATIENT", charset=charset, PatientName="")
            ds = decode(response_identifier(query, "PATIENT", self.ATTRS, ILE),
                        True, True)
            self.assertEqual(ds["SpecificCharacterSet"].value,
                             charset.split("\\") if "\\" in charset else charset)
            self.assertEqual(ds.PatientName, "Doe^Jane")

    def test_response_parses_as_query(self) -> None:
        """The response decodes, via parse_identifier, to the values sent."""
        query = make_query("STUDY", STUDY_ROOT, PatientName="", StudyDate="",
                           AccessionNumber="", StudyInstanceUID="")
        attrs = {"PatientName": "Doe^Jane", "StudyDate": "20240102",
                 "StudyInstanceUID": "1.2"}
        for ts, _, _ in ENCODINGS:
            again = parse_identifier(
                response_identifier(query, "STUDY", attrs, ts), ts, STUDY_ROOT)
            self.assertEqual(again.level, "STUDY")
            self.assertEqual(again.keys, {**attrs, "AccessionNumber": ""})

    def test_malformed_stored_values(self) -> None:
        """Stored values are returned as stored, unvalidated and silently;
        one its VR cannot hold at all (IS "abc") comes back zero-length."""
        query = make_query("SERIES", STUDY_ROOT, StudyInstanceUID="1.2",
                           SeriesDate="", SeriesNumber="", Modality="")
        attrs = {"StudyInstanceUID": "1.2", "SeriesInstanceUID": "1.2.3",
                 "SeriesDate": "2020", "SeriesNumber": "abc", "Modality": "ct"}
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            data = response_identifier(query, "SERIES", attrs, ILE)
        self.assertEqual([str(w.message) for w in caught], [])
        raw = read_dataset(DicomBytesIO(data), True, True)
        self.assertEqual(raw.get_item(0x00080021).value, b"2020")   # SeriesDate
        self.assertEqual(raw.get_item(0x00080060).value, b"ct")     # Modality
        self.assertIsNone(raw.get_item(0x00200011).value)           # SeriesNumber

    def test_level_not_in_model(self) -> None:
        """A level the model lacks is a programming error (ValueError)."""
        query = make_query("STUDY", STUDY_ROOT)
        self.assertRaises(ValueError, response_identifier, query, "PATIENT",
                          {}, ILE)

    @settings(max_examples=100, deadline=None, database=None)
    @given(st.text(alphabet=st.characters(blacklist_characters="\\=^",
                                          blacklist_categories=("Cs", "Cc")),
                   min_size=1, max_size=30).map(str.strip).filter(bool))
    def test_any_text_round_trips(self, text: str) -> None:
        """Any LO/PN text round-trips through a response and a re-parse."""
        query = make_query("STUDY", STUDY_ROOT, StudyDescription="",
                           ReferringPhysicianName="")
        attrs = {"StudyDescription": text, "ReferringPhysicianName": text}
        for ts, _, _ in ENCODINGS:
            again = parse_identifier(
                response_identifier(query, "STUDY", attrs, ts), ts, STUDY_ROOT)
            self.assertEqual(again.keys["StudyDescription"], text)
            self.assertEqual(again.keys["ReferringPhysicianName"], text)


# -- retrieve_keys (PS3.4 C.4.2.2.1, C.4.3.2.1) ---------------------------------
class RetrieveKeysTests(SynchronousTestCase):
    """C-MOVE/C-GET identifiers: valid ones and each kind of error."""

    def test_valid(self) -> None:
        """Unique keys of the level (UID lists allowed) and above are taken."""
        cases = [
            (PATIENT_ROOT, dict(QueryRetrieveLevel="PATIENT", PatientID="P1"),
             "PATIENT", ["P1"]),
            (PATIENT_ROOT, dict(QueryRetrieveLevel="STUDY", PatientID="P1",
                                StudyInstanceUID="1.2\\1.3"), "STUDY", ["1.2", "1.3"]),
            (PATIENT_ROOT, dict(QueryRetrieveLevel="IMAGE", PatientID="P1",
                                StudyInstanceUID="1.2", SeriesInstanceUID="1.2.3",
                                SOPInstanceUID="1.2.3.4"), "IMAGE", ["1.2.3.4"]),
            (STUDY_ROOT, dict(QueryRetrieveLevel="STUDY",
                              StudyInstanceUID="1.2"), "STUDY", ["1.2"]),
            (STUDY_ROOT, dict(QueryRetrieveLevel="SERIES", StudyInstanceUID="1.2",
                              SeriesInstanceUID="1.2.3\\1.2.4"),
             "SERIES", ["1.2.3", "1.2.4"]),
            (STUDY_ROOT, dict(QueryRetrieveLevel="IMAGE", StudyInstanceUID="1.2",
                              SeriesInstanceUID="1.2.3",
                              SOPInstanceUID="1.2.3.4\\1.2.3.5"),
             "IMAGE", ["1.2.3.4", "1.2.3.5"]),
        ]
        for model, keys, level, values in cases:
            for ts, implicit, little in ENCODINGS:
                query = retrieve_keys(encode(identifier(**keys), implicit, little),
                                      ts, model)
                self.assertEqual(query.level, level)
                self.assertEqual(query.unique_values(level), values)

    def test_invalid(self) -> None:
        """Missing/wild/universal unique keys, bad levels: 0xA900 naming the key."""
        cases = [
            (PATIENT_ROOT, dict(QueryRetrieveLevel="PATIENT"), "PatientID"),
            (PATIENT_ROOT, dict(QueryRetrieveLevel="PATIENT", PatientID=""),
             "PatientID"),
            (PATIENT_ROOT, dict(QueryRetrieveLevel="PATIENT", PatientID="P*"),
             "PatientID"),
            (PATIENT_ROOT, dict(QueryRetrieveLevel="PATIENT",
                                PatientID="P1\\P2"), "PatientID"),
            (PATIENT_ROOT, dict(QueryRetrieveLevel="STUDY",
                                StudyInstanceUID="1.2"), "PatientID"),
            (PATIENT_ROOT, dict(QueryRetrieveLevel="STUDY", PatientID="P1"),
             "StudyInstanceUID"),
            (STUDY_ROOT, dict(QueryRetrieveLevel="STUDY", StudyInstanceUID="*"),
             "StudyInstanceUID"),
            (STUDY_ROOT, dict(QueryRetrieveLevel="SERIES",
                              SeriesInstanceUID="1.2.3"), "StudyInstanceUID"),
            (STUDY_ROOT, dict(QueryRetrieveLevel="SERIES", StudyInstanceUID="1.2"),
             "SeriesInstanceUID"),
            (STUDY_ROOT, dict(QueryRetrieveLevel="IMAGE", StudyInstanceUID="1.2",
                              SeriesInstanceUID="1.2.3\\1.2.4",
                              SOPInstanceUID="1.2.3.4"), "SeriesInstanceUID"),
            (STUDY_ROOT, dict(QueryRetrieveLevel="IMAGE", StudyInstanceUID="1.2",
                              SeriesInstanceUID="1.2.3", SOPInstanceUID="1.2.*"),
             "SOPInstanceUID"),
            (STUDY_ROOT, dict(QueryRetrieveLevel="PATIENT", PatientID="P1"),
             "PATIENT"),
            (STUDY_ROOT, dict(StudyInstanceUID="1.2"), "QueryRetrieveLevel"),
        ]
        for model, keys, needle in cases:
            exc = self.assertRaises(QueryError, retrieve_keys,
                                    encode(identifier(**keys), True, True), ILE,
                                    model)
            self.assertEqual(exc.status, 0xA900, (keys, exc.comment))
            self.assertIn(needle, exc.comment)
            self.assertLessEqual(len(exc.comment), 64)

    def test_garbage(self) -> None:
        """Undecodable C-MOVE identifiers give 0xC000."""
        exc = self.assertRaises(QueryError, retrieve_keys, b"\x01\x02\x03", ILE,
                                STUDY_ROOT)
        self.assertEqual(exc.status, 0xC000)


class ModuleTests(SynchronousTestCase):
    """Module-level facts: constants and the sans-I/O import rule."""

    def test_constants(self) -> None:
        """The model names, levels and unique keys of PS3.4 C.6.1/C.6.2."""
        self.assertEqual(PATIENT_ROOT, "PATIENT")
        self.assertEqual(STUDY_ROOT, "STUDY")
        self.assertEqual(LEVELS, ("PATIENT", "STUDY", "SERIES", "IMAGE"))
        self.assertEqual(UNIQUE_KEYS["SERIES"], "SeriesInstanceUID")
        from sdcc_twisted.core.conformance import QUERY_RETRIEVE_MODELS, STUDY_ROOT_FIND
        self.assertEqual(QUERY_RETRIEVE_MODELS[STUDY_ROOT_FIND], (STUDY_ROOT, "FIND"))

    def test_query_error(self) -> None:
        """QueryError carries status and a comment cut to 64 characters."""
        exc = QueryError(0xC000, "x" * 100)
        self.assertEqual(exc.status, 0xC000)
        self.assertEqual(exc.comment, "x" * 64)

    def test_no_twisted_import(self) -> None:
        """The module imports no Twisted, Redis or zope (sans-I/O core)."""
        import os
        import subprocess
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(q.__file__))))
        code = ("import sys, sdcc_twisted.core.query; "
                "bad = [m for m in sys.modules if m.split('.')[0] in "
                "('twisted', 'txredisapi', 'redis', 'zope')]; "
                "assert not bad, bad")
        subprocess.run([sys.executable, "-c", code], check=True, cwd=root,
                       env={**os.environ, "PYTHONPATH": root})
