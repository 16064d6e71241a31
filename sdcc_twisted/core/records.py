"""What the index holds about a stored instance, and which attributes it keeps.

The attributes are those a C-FIND at each Query/Retrieve level needs
(PS3.4 C.6.1.1 and C.6.2.1 unique and required keys, plus the usual optional
keys).  They are read from the data set's leading bytes as they stream past.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

#: level -> ((group, element), keyword) kept for that level (PS3.4 C.6).
INDEX_ATTRIBUTES: Final[dict[str, tuple[tuple[int, str], ...]]] = {
    "PATIENT": (
        (0x00100010, "PatientName"),
        (0x00100020, "PatientID"),
        (0x00100030, "PatientBirthDate"),
        (0x00100040, "PatientSex"),
    ),
    "STUDY": (
        (0x0020000D, "StudyInstanceUID"),
        (0x00080020, "StudyDate"),
        (0x00080030, "StudyTime"),
        (0x00080050, "AccessionNumber"),
        (0x00200010, "StudyID"),
        (0x00081030, "StudyDescription"),
        (0x00080090, "ReferringPhysicianName"),
    ),
    "SERIES": (
        (0x0020000E, "SeriesInstanceUID"),
        (0x00080060, "Modality"),
        (0x00200011, "SeriesNumber"),
        (0x0008103E, "SeriesDescription"),
        (0x00080021, "SeriesDate"),
        (0x00080031, "SeriesTime"),
    ),
    "IMAGE": (
        (0x00080018, "SOPInstanceUID"),
        (0x00080016, "SOPClassUID"),
        (0x00200013, "InstanceNumber"),
        (0x00080023, "ContentDate"),
        (0x00080033, "ContentTime"),
    ),
}

#: Specific Character Set, needed to decode the text values above (PS3.5 6.1).
SPECIFIC_CHARACTER_SET_TAG: Final = 0x00080005

#: tag -> keyword for every attribute the head parser collects.
HEAD_TAGS: Final[dict[int, str]] = {
    tag: keyword for level in INDEX_ATTRIBUTES.values() for tag, keyword in level
}
HEAD_TAGS[SPECIFIC_CHARACTER_SET_TAG] = "SpecificCharacterSet"


@dataclass(frozen=True)
class InstanceRecord:
    """One stored SOP instance as the index records it.

    Attributes:
        sop_instance_uid: from the C-STORE-RQ (0000,1000), checked equal to
            the data set's (0008,0018).
        sop_class_uid: from the C-STORE-RQ (0000,0002).
        transfer_syntax: the one accepted for the presentation context.
        path: absolute path of the Part 10 file.
        size: file size in bytes.
        received_at: POSIX time at which the file was committed.
        calling_ae: the association's calling AE title.
        attributes: keyword -> decoded string value, for the keys of
            :data:`INDEX_ATTRIBUTES` present in the data set.
        sequence: assigned by the server when the C-STORE-RQ arrived,
            monotonic across restarts; it orders the versions of one SOP
            Instance UID (the wall clock may step back).  0: unknown (a
            record from before sequences, or rebuilt from a file), older
            than any other.
    """

    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax: str
    path: str
    size: int
    received_at: float
    calling_ae: str
    attributes: dict[str, str] = field(default_factory=dict)
    sequence: int = 0

    def to_dict(self) -> dict[str, object]:
        """The record as plain JSON-ready values (``InstanceRecord(**d)``
        reverses it); written by hand, as ``dataclasses.asdict`` deep-copies
        every value and cost 0.1-0.2 ms per instance on the receive path."""
        return {
            "sop_instance_uid": self.sop_instance_uid,
            "sop_class_uid": self.sop_class_uid,
            "transfer_syntax": self.transfer_syntax,
            "path": self.path,
            "size": self.size,
            "received_at": self.received_at,
            "calling_ae": self.calling_ae,
            "attributes": dict(self.attributes),
            "sequence": self.sequence,
        }

    @property
    def study_uid(self) -> str:
        """The Study Instance UID, or empty if the data set had none."""
        return self.attributes.get("StudyInstanceUID", "")

    @property
    def series_uid(self) -> str:
        """The Series Instance UID, or empty if the data set had none."""
        return self.attributes.get("SeriesInstanceUID", "")

    @property
    def patient_id(self) -> str:
        """The Patient ID, or empty if the data set had none."""
        return self.attributes.get("PatientID", "")
