"""securefed.ckks: CKKS (TenSEAL) aggregation of small tensors, secret key never at the aggregator.

Spec: protocols/ckks.md; threat model: threat_models/ckks.md. Public API for the runtime:
``RoutingPolicy``, ``plan_routes``/``RoutePlan`` (which tensors go where; ``index_arrays``,
``split``/``merge``, ``to_text``/``dumps_json``), ``make_keyring``/``setup_keyring`` -> ``CkksKeyring``
(holder-side keys, rotation), ``run_ckks_round`` -> ``CkksOutcome``, and ``CkksServer`` (the
aggregator role, public context only; keep one across rounds to avoid re-sending the context).
"""

from securefed.ckks.aggregate import CkksKeyring, CkksOutcome, make_keyring, run_ckks_round, setup_keyring
from securefed.ckks.keys import ContextRejected
from securefed.ckks.keyshare import HolderPublic, HolderSecrets, KeyShareError
from securefed.ckks.routing import RouteEntry, RoutePlan, RoutingPolicy, plan_routes
from securefed.ckks.server import CkksServer, UploadRejected

__all__ = [
    "RoutingPolicy",
    "RouteEntry",
    "RoutePlan",
    "plan_routes",
    "CkksKeyring",
    "CkksOutcome",
    "setup_keyring",
    "make_keyring",
    "run_ckks_round",
    "CkksServer",
    "UploadRejected",
    "ContextRejected",
    "HolderPublic",
    "HolderSecrets",
    "KeyShareError",
]
