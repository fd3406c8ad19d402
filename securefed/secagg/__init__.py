"""Secure aggregation: Bonawitz et al. double masking with the SecAgg+ graph (protocols/secagg.md).

Public API for the runtime and the transport::

    run_secagg_round(inputs, config=..., round_index=..., session_context=..., identities=..., roster=...,
                     entropy_for=..., dropouts=None, transcript_dir=None) -> SecAggOutcome
    SecAggClient.handle(bytes) -> bytes;  SecAggServer.round_start() / receive(sender, bytes) / close_stage()
"""

from securefed.primitives.keys import IdentityKey, generate_identity
from securefed.secagg.roster import Roster, RosterError
from securefed.secagg.client import CLIENT_TRANSITIONS, ClientStage, SecAggClient
from securefed.secagg.config import SecAggConfig, Thresholds, threshold_for
from securefed.secagg.driver import DropoutPlan, SecAggOutcome, Stage, run_secagg_round
from securefed.secagg.errors import IdentityInUse, MessageError, SecAggAborted, UnexpectedMessage
from securefed.secagg.messages import decode, encode
from securefed.secagg.server import SERVER_TRANSITIONS, SecAggServer, ServerStage

__all__ = [
    "SecAggConfig", "Thresholds", "threshold_for", "SecAggAborted", "IdentityInUse", "MessageError", "UnexpectedMessage",
    "SecAggOutcome", "DropoutPlan", "Stage", "run_secagg_round", "SecAggClient", "SecAggServer", "ClientStage",
    "ServerStage", "CLIENT_TRANSITIONS", "SERVER_TRANSITIONS", "IdentityKey", "Roster", "RosterError",
    "generate_identity", "encode", "decode",
]
