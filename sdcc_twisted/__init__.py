"""sdcc-twisted: a DICOM Verification, Storage and Query/Retrieve SCP built on Twisted."""

__version__ = "1.1.0"
