"""The conformance tables and the protocol constants: the one place they live.

The SOP classes and transfer syntaxes are those of the conformance statement
(``shared/spec/conformance-statement.txt``), with its two known defects fixed:
the Application Context Name is the standard ``1.2.840.10008.3.1.1.1``
(PS3.7 Annex A.2.1) and "16 KB" means 16384.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, NamedTuple

# -- Implementation identification (statement, "Implementation Identification")
IMPLEMENTATION_CLASS_UID: Final = "1.2.392.100224.1.2002.100.5"
IMPLEMENTATION_VERSION_NAME: Final = "SDCC 1.1"

#: PS3.7 Annex A.2.1, the DICOM Application Context Name.
APPLICATION_CONTEXT_NAME: Final = "1.2.840.10008.3.1.1.1"

#: The Maximum Length we propose by default (statement: "16 KB"; PS3.8 D.1).
DEFAULT_MAX_PDU_LENGTH: Final = 16384

# -- Transfer syntaxes (statement, "Transfer Syntax"; PS3.5 Annex A) --------
IMPLICIT_VR_LITTLE_ENDIAN: Final = "1.2.840.10008.1.2"
EXPLICIT_VR_LITTLE_ENDIAN: Final = "1.2.840.10008.1.2.1"
EXPLICIT_VR_BIG_ENDIAN: Final = "1.2.840.10008.1.2.2"
JPEG_BASELINE: Final = "1.2.840.10008.1.2.4.50"
JPEG_EXTENDED: Final = "1.2.840.10008.1.2.4.51"
JPEG_LOSSLESS_SV1: Final = "1.2.840.10008.1.2.4.70"
JPEG_2000_LOSSLESS: Final = "1.2.840.10008.1.2.4.90"
JPEG_2000: Final = "1.2.840.10008.1.2.4.91"
RLE_LOSSLESS: Final = "1.2.840.10008.1.2.5"

TRANSFER_SYNTAXES: Final[dict[str, str]] = {
    IMPLICIT_VR_LITTLE_ENDIAN: "Implicit VR Little Endian",
    EXPLICIT_VR_LITTLE_ENDIAN: "Explicit VR Little Endian",
    EXPLICIT_VR_BIG_ENDIAN: "Explicit VR Big Endian",
    JPEG_BASELINE: "JPEG Baseline (Process 1)",
    JPEG_EXTENDED: "JPEG Extended (Process 2 & 4)",
    JPEG_LOSSLESS_SV1: "JPEG Lossless, First-Order Prediction",
    JPEG_2000_LOSSLESS: "JPEG 2000 Image Compression (Lossless Only)",
    JPEG_2000: "JPEG 2000 Image Compression",
    RLE_LOSSLESS: "RLE Lossless",
}

#: Transfer syntaxes whose data set is encoded with implicit VRs (PS3.5 A.1).
IMPLICIT_VR_SYNTAXES: Final = frozenset({IMPLICIT_VR_LITTLE_ENDIAN})
#: Transfer syntaxes whose data set is big endian (PS3.5 A.3).
BIG_ENDIAN_SYNTAXES: Final = frozenset({EXPLICIT_VR_BIG_ENDIAN})

# -- Decoding for a peer that does not accept the stored syntax (PS3.5 8.2) ----
#: Compressed syntaxes an instance can be decoded from (pydicom with the
#: pylibjpeg plugins) when a C-MOVE/C-GET peer accepts none of them.
DECODABLE_SYNTAXES: Final = frozenset({
    JPEG_BASELINE, JPEG_EXTENDED, JPEG_LOSSLESS_SV1, JPEG_2000_LOSSLESS, JPEG_2000,
    RLE_LOSSLESS})
#: What a decoded instance is sent in, most preferred first (PS3.5 A.2, A.1).
DECODED_SYNTAXES: Final = (EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN)
#: Always-lossy syntaxes -> their Lossy Image Compression Method (PS3.3
#: C.7.6.1.1.5.1); JPEG 2000 (.91) may be reversible, so what the stored
#: instance says about it stays as it is.
LOSSY_COMPRESSION_METHODS: Final[dict[str, str]] = {
    JPEG_BASELINE: "ISO_10918_1", JPEG_EXTENDED: "ISO_10918_1"}


def contexts_with_decoded(wanted: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The (SOP class, transfer syntax) pairs to propose for sending
    ``wanted``: each as stored first, then, for a decodable stored syntax,
    the same class in each of :data:`DECODED_SYNTAXES` (PS3.4 C.4.2.2.4:
    a sub-association may offer any syntax the instance can be sent in)."""
    extra = [(sop_class, target) for sop_class, stored in wanted
             if stored in DECODABLE_SYNTAXES for target in DECODED_SYNTAXES]
    return list(dict.fromkeys([*wanted, *extra]))


def sending_syntax(stored: str, accepted: Callable[[str], bool]) -> str | None:
    """The syntax to send an instance stored in ``stored`` in: ``stored``
    itself when the peer accepted it (the file goes as it is), else the
    first accepted of :data:`DECODED_SYNTAXES` when ``stored`` can be
    decoded; None when neither."""
    if accepted(stored):
        return stored
    if stored in DECODABLE_SYNTAXES:
        for target in DECODED_SYNTAXES:
            if accepted(target):
                return target
    return None

# -- SOP classes (statement, "AE Specification") -----------------------------
VERIFICATION_SOP_CLASS: Final = "1.2.840.10008.1.1"

VERIFICATION_SOP_CLASSES: Final[dict[str, str]] = {
    VERIFICATION_SOP_CLASS: "Verification",
}

STORAGE_SOP_CLASSES: Final[dict[str, str]] = {
    "1.2.840.10008.5.1.4.1.1.1": "Computed Radiography Image Storage",
    "1.2.840.10008.5.1.4.1.1.1.1": "Digital X-Ray Image Storage - For Presentation",
    "1.2.840.10008.5.1.4.1.1.1.1.1": "Digital X-Ray Image Storage - For Processing",
    "1.2.840.10008.5.1.4.1.1.1.2": "Digital Mammography X-Ray Image Storage - For Presentation",
    "1.2.840.10008.5.1.4.1.1.1.2.1": "Digital Mammography X-Ray Image Storage - For Processing",
    "1.2.840.10008.5.1.4.1.1.1.3": "Digital Intra-Oral X-Ray Image Storage - For Presentation",
    "1.2.840.10008.5.1.4.1.1.1.3.1": "Digital Intra-Oral X-Ray Image Storage - For Processing",
    "1.2.840.10008.5.1.4.1.1.2": "CT Image Storage",
    "1.2.840.10008.5.1.4.1.1.3": "Ultrasound Multi-frame Image Storage (Retired)",
    "1.2.840.10008.5.1.4.1.1.3.1": "Ultrasound Multi-frame Image Storage",
    "1.2.840.10008.5.1.4.1.1.4": "MR Image Storage",
    "1.2.840.10008.5.1.4.1.1.4.1": "Enhanced MR Image Storage",
    "1.2.840.10008.5.1.4.1.1.4.2": "MR Spectroscopy Storage",
    "1.2.840.10008.5.1.4.1.1.4.3": "Enhanced MR Color Image Storage",
    "1.2.840.10008.5.1.4.1.1.5": "Nuclear Medicine Image Storage (Retired)",
    "1.2.840.10008.5.1.4.1.1.6": "Ultrasound Image Storage (Retired)",
    "1.2.840.10008.5.1.4.1.1.6.1": "Ultrasound Image Storage",
    "1.2.840.10008.5.1.4.1.1.7": "Secondary Capture Image Storage",
    "1.2.840.10008.5.1.4.1.1.12.1": "X-Ray Angiographic Image Storage",
    "1.2.840.10008.5.1.4.1.1.12.2": "X-Ray Radiofluoroscopic Image Storage",
    "1.2.840.10008.5.1.4.1.1.12.3": "X-Ray Angiographic Bi-Plane Image Storage (Retired)",
    "1.2.840.10008.5.1.4.1.1.20": "Nuclear Medicine Image Storage",
    "1.2.840.10008.5.1.4.1.1.77.1": "VL Image Storage (Retired)",
    "1.2.840.10008.5.1.4.1.1.77.1.1": "VL Endoscopic Image Storage",
    "1.2.840.10008.5.1.4.1.1.77.1.2": "VL Microscopic Image Storage",
    "1.2.840.10008.5.1.4.1.1.77.1.3": "VL Slide-Coordinates Microscopic Image Storage",
    "1.2.840.10008.5.1.4.1.1.77.1.4": "VL Photographic Image Storage",
    "1.2.840.10008.5.1.4.1.1.77.2": "VL Multi-frame Image Storage (Retired)",
    "1.2.840.10008.5.1.4.1.1.128": "Positron Emission Tomography Image Storage",
    "1.2.840.10008.5.1.4.1.1.481.1": "RT Image Storage",
}

# -- Query/Retrieve (statement: "retrieval and image request"; PS3.4 C.6) ----
# An extension of the statement's tables: the Patient Root and Study Root
# information models, FIND, MOVE and GET.
PATIENT_ROOT_FIND: Final = "1.2.840.10008.5.1.4.1.2.1.1"
PATIENT_ROOT_MOVE: Final = "1.2.840.10008.5.1.4.1.2.1.2"
PATIENT_ROOT_GET: Final = "1.2.840.10008.5.1.4.1.2.1.3"
STUDY_ROOT_FIND: Final = "1.2.840.10008.5.1.4.1.2.2.1"
STUDY_ROOT_MOVE: Final = "1.2.840.10008.5.1.4.1.2.2.2"
STUDY_ROOT_GET: Final = "1.2.840.10008.5.1.4.1.2.2.3"

QUERY_RETRIEVE_SOP_CLASSES: Final[dict[str, str]] = {
    PATIENT_ROOT_FIND: "Patient Root Query/Retrieve Information Model - FIND",
    PATIENT_ROOT_MOVE: "Patient Root Query/Retrieve Information Model - MOVE",
    PATIENT_ROOT_GET: "Patient Root Query/Retrieve Information Model - GET",
    STUDY_ROOT_FIND: "Study Root Query/Retrieve Information Model - FIND",
    STUDY_ROOT_MOVE: "Study Root Query/Retrieve Information Model - MOVE",
    STUDY_ROOT_GET: "Study Root Query/Retrieve Information Model - GET",
}

#: Q/R SOP class -> (information model, operation).
QUERY_RETRIEVE_MODELS: Final[dict[str, tuple[str, str]]] = {
    PATIENT_ROOT_FIND: ("PATIENT", "FIND"), PATIENT_ROOT_MOVE: ("PATIENT", "MOVE"),
    PATIENT_ROOT_GET: ("PATIENT", "GET"), STUDY_ROOT_FIND: ("STUDY", "FIND"),
    STUDY_ROOT_MOVE: ("STUDY", "MOVE"), STUDY_ROOT_GET: ("STUDY", "GET"),
}

#: Identifiers are small: the uncompressed little endian syntaxes suffice.
QUERY_RETRIEVE_TRANSFER_SYNTAXES: Final = (IMPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_LITTLE_ENDIAN)

#: Abstract syntax -> the transfer syntaxes we accept for it, in our order of
#: preference.  Verification takes Implicit VR LE only, as the statement says.
SUPPORTED_CONTEXTS: Final[dict[str, tuple[str, ...]]] = {
    VERIFICATION_SOP_CLASS: (IMPLICIT_VR_LITTLE_ENDIAN,),
    **{uid: tuple(TRANSFER_SYNTAXES) for uid in STORAGE_SOP_CLASSES},
    **{uid: QUERY_RETRIEVE_TRANSFER_SYNTAXES for uid in QUERY_RETRIEVE_SOP_CLASSES},
}

SOP_CLASS_NAMES: Final[dict[str, str]] = {
    **VERIFICATION_SOP_CLASSES,
    **STORAGE_SOP_CLASSES,
    **QUERY_RETRIEVE_SOP_CLASSES,
}


def sop_class_name(uid: str) -> str:
    """Return the human name of a SOP class UID, or the UID itself."""
    return SOP_CLASS_NAMES.get(uid, uid)


# -- Presentation context results (PS3.8 Table 9-18) -------------------------
PC_ACCEPTANCE: Final = 0
PC_USER_REJECTION: Final = 1
PC_NO_REASON: Final = 2
PC_ABSTRACT_SYNTAX_NOT_SUPPORTED: Final = 3
PC_TRANSFER_SYNTAXES_NOT_SUPPORTED: Final = 4


# -- A-ASSOCIATE-RJ (PS3.8 9.3.4, Table 9-21) ---------------------------------
class RejectReason(NamedTuple):
    """An A-ASSOCIATE-RJ Result / Source / Reason-Diag triple."""

    result: int
    source: int
    reason: int
    text: str


REJECTED_PERMANENT: Final = 1
REJECTED_TRANSIENT: Final = 2

REJECT_APPLICATION_CONTEXT: Final = RejectReason(
    1, 1, 2, "application-context-name-not-supported")
REJECT_CALLING_AE: Final = RejectReason(1, 1, 3, "calling-AE-title-not-recognized")
REJECT_CALLED_AE: Final = RejectReason(1, 1, 7, "called-AE-title-not-recognized")
REJECT_PROTOCOL_VERSION: Final = RejectReason(1, 2, 2, "protocol-version-not-supported")
REJECT_AE_BUSY: Final = RejectReason(
    2, 3, 2, "local-limit-exceeded (calling AE already has an association)")
REJECT_TOO_MANY: Final = RejectReason(
    2, 3, 2, "local-limit-exceeded (association limit reached)")
REJECT_NO_REASON: Final = RejectReason(1, 1, 1, "no-reason-given")
REJECT_LOCK_UNAVAILABLE: Final = RejectReason(
    2, 3, 1, "temporary-congestion (lock unavailable)")

# -- A-ABORT (PS3.8 9.3.8, Table 9-26) --------------------------------------
ABORT_SOURCE_USER: Final = 0
ABORT_SOURCE_PROVIDER: Final = 2

ABORT_REASON_NOT_SPECIFIED: Final = 0
ABORT_UNRECOGNIZED_PDU: Final = 1
ABORT_UNEXPECTED_PDU: Final = 2
ABORT_UNRECOGNIZED_PDU_PARAMETER: Final = 4
ABORT_UNEXPECTED_PDU_PARAMETER: Final = 5
ABORT_INVALID_PDU_PARAMETER_VALUE: Final = 6

ABORT_REASON_TEXT: Final[dict[int, str]] = {
    0: "reason-not-specified",
    1: "unrecognized-PDU",
    2: "unexpected-PDU",
    4: "unrecognized-PDU-parameter",
    5: "unexpected-PDU-parameter",
    6: "invalid-PDU-parameter-value",
}

# -- DIMSE command fields (PS3.7 Annex E, Table E.1-1) ------------------------
C_STORE_RQ: Final = 0x0001
C_STORE_RSP: Final = 0x8001
C_GET_RQ: Final = 0x0010
C_GET_RSP: Final = 0x8010
C_FIND_RQ: Final = 0x0020
C_FIND_RSP: Final = 0x8020
C_MOVE_RQ: Final = 0x0021
C_MOVE_RSP: Final = 0x8021
C_ECHO_RQ: Final = 0x0030
C_ECHO_RSP: Final = 0x8030
C_CANCEL_RQ: Final = 0x0FFF

COMMAND_NAMES: Final[dict[int, str]] = {
    C_STORE_RQ: "C-STORE-RQ", C_STORE_RSP: "C-STORE-RSP",
    C_GET_RQ: "C-GET-RQ", C_GET_RSP: "C-GET-RSP",
    C_FIND_RQ: "C-FIND-RQ", C_FIND_RSP: "C-FIND-RSP",
    C_MOVE_RQ: "C-MOVE-RQ", C_MOVE_RSP: "C-MOVE-RSP",
    C_ECHO_RQ: "C-ECHO-RQ", C_ECHO_RSP: "C-ECHO-RSP",
    C_CANCEL_RQ: "C-CANCEL-RQ",
}

#: (0000,0800) value meaning "no data set"; any other value means one follows
#: (PS3.7 E.1; DCMTK dimse.h notes senders of 0x0001 and 0x0102).
NO_DATA_SET: Final = 0x0101

# -- DIMSE statuses (PS3.7 Annex C; PS3.4 B.2.3, Table B.2-1) -----------------
STATUS_SUCCESS: Final = 0x0000
STATUS_OUT_OF_RESOURCES: Final = 0xA700
STATUS_DISK_FULL: Final = 0xA702
STATUS_DATASET_MISMATCH: Final = 0xA900
STATUS_CANNOT_UNDERSTAND: Final = 0xC000
STATUS_DATASET_UNPARSEABLE: Final = 0xC210
STATUS_PROCESSING_FAILURE: Final = 0x0110
STATUS_SOP_CLASS_NOT_SUPPORTED: Final = 0x0122
STATUS_UNRECOGNIZED_OPERATION: Final = 0x0211
STATUS_MISTYPED_ARGUMENT: Final = 0x0212

# Query/Retrieve statuses (PS3.4 C.4.1.1.4, C.4.2.1.5, C.4.3.1.4).
STATUS_PENDING: Final = 0xFF00
STATUS_PENDING_WARNING: Final = 0xFF01
STATUS_CANCEL: Final = 0xFE00
STATUS_SUBOPS_WARNING: Final = 0xB000
STATUS_MOVE_DESTINATION_UNKNOWN: Final = 0xA801
STATUS_QR_OUT_OF_RESOURCES: Final = 0xA700
STATUS_QR_SUBOPS_OUT_OF_RESOURCES: Final = 0xA702
STATUS_IDENTIFIER_MISMATCH: Final = 0xA900
STATUS_UNABLE_TO_PROCESS: Final = 0xC000

# -- Message control header bits (PS3.8 E.2) ---------------------------------
PDV_COMMAND: Final = 0x01
PDV_LAST: Final = 0x02
