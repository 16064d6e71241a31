"""The DIMSE services this AE provides: Verification, Storage and
Query/Retrieve (PS3.4 Annexes A, B and C).
"""
