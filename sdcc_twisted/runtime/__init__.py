"""The Twisted runtime: the association shell that runs the core on a transport,
for both roles (acceptor and requestor), and sending stored instances.
"""
