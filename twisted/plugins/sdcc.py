"""twistd plugin: ``twistd sdcc --config etc/sdcc.ini``."""

from twisted.application.service import ServiceMaker

sdcc = ServiceMaker(
    "SDCC DICOM server",
    "sdcc_twisted.tap",
    "DICOM Verification and Storage SCP that streams images to disk and indexes them in Redis",
    "sdcc",
)
