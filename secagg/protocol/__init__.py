"""Secure aggregation (Bonawitz et al. 2017; SecAgg+ of Bell et al. 2020) as sans-I/O state machines.

:class:`Client` and :class:`Server` take messages and return messages; :mod:`secagg.protocol.wire`
turns messages into bytes and back; :func:`run_session` drives a whole session in one process.
"""

from secagg.protocol.client import Client, ClientPhase
from secagg.protocol.finder import secaggplus_parameters
from secagg.protocol.messages import SessionParams, Stage
from secagg.protocol.runner import SessionReport, run_session
from secagg.protocol.server import Server, ServerPhase
from secagg.protocol.wire import decode, encode

__all__ = [
    "Client",
    "ClientPhase",
    "Server",
    "ServerPhase",
    "SessionParams",
    "SessionReport",
    "Stage",
    "decode",
    "encode",
    "run_session",
    "secaggplus_parameters",
]
