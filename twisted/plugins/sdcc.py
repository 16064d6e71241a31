"""twistd plugin: ``twistd sdcc --config etc/sdcc.ini``."""

from twisted.application.service import ServiceMaker

sdcc = ServiceMaker(
    "SDCC DICOM server",
    "sdcc_twisted.tap",
    "DICOM Verification, Storage and Query/Retrieve SCP: streams images to disk, "
    "indexes them in Redis, answers C-FIND/C-MOVE/C-GET from that index",
    "sdcc",
)
