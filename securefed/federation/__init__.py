"""securefed.federation: the round, written once (protocols/federation.md).

``Coordinator`` and ``Holder`` exchange typed, versioned messages (``messages``) through a ``Channel``:
``InProcChannel`` (holders in this process), ``GrpcChannel`` (holders in other processes or
institutions, gRPC + mutual TLS over securefed.transport) or ``RayChannel`` (one Ray actor per holder,
``ray.py``; optional extra ``securefed[ray]``). ``Simulation`` builds a whole federation on one machine
(or a Ray cluster) through any of them.
"""
