"""The sans-I/O DICOM core: PDUs, framing, the PS3.8 state machine, negotiation,
DIMSE assembly, data set walking and query matching.  It imports nothing from
Twisted or Redis and touches no socket, file or clock.
"""
