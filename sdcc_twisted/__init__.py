"""sdcc-twisted: a DICOM Verification and Storage SCP built on Twisted."""

__version__ = "1.1.0"
