"""securefed.federation: the round, written once (protocols/federation.md).

``Coordinator`` and ``Holder`` exchange typed, versioned messages (``messages``) through a ``Channel``:
``InProcChannel`` (holders in this process) or ``GrpcChannel`` (holders in other processes or
institutions, gRPC + mutual TLS over securefed.transport). ``Simulation`` builds a whole federation on
one machine through either channel.
"""
