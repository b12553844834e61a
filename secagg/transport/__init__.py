"""Networked deployment: the sans-I/O protocol state machines driven over gRPC.

:mod:`~secagg.transport.envelope` (payload codecs), :mod:`~secagg.transport.auth` (Ed25519 login),
:mod:`~secagg.transport.tls` (CA and server certificate), :mod:`~secagg.transport.coordinator` (the
round state machine with deadlines), :mod:`~secagg.transport.service` (the gRPC service),
:mod:`~secagg.transport.serve` (the server process) and :mod:`~secagg.transport.node` (a client).
"""
