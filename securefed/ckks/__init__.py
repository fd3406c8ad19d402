"""securefed.ckks: CKKS (TenSEAL) aggregation of small tensors, secret key never at the aggregator.

Spec: protocols/ckks.md; threat model: threat_models/ckks.md. Public API for the runtime:
``RoutingPolicy``, ``plan_routes``/``RoutePlan`` (which tensors go where; ``index_arrays``,
``split``/``merge``, ``to_text``/``dumps_json``), ``make_keyring``/``setup_keyring`` -> ``CkksKeyring``
(holder-side keys, rotation), ``run_ckks_round`` -> ``CkksOutcome``, and ``CkksServer`` (the
aggregator role, public context only; keep one across rounds to avoid re-sending the context).

Names are resolved on first use (PEP 562): a run's config (``RoutingPolicy``) is checked without
loading TenSEAL, which only the CKKS route needs.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "RoutingPolicy": "routing", "RouteEntry": "routing", "RoutePlan": "routing", "plan_routes": "routing",
    "CkksKeyring": "aggregate", "CkksOutcome": "aggregate", "setup_keyring": "aggregate",
    "make_keyring": "aggregate", "run_ckks_round": "aggregate",
    "CkksServer": "server", "UploadRejected": "server", "ContextRejected": "keys",
    "HolderPublic": "keyshare", "HolderSecrets": "keyshare", "KeyShareError": "keyshare",
}  # fmt: skip

__all__ = list(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"securefed.ckks.{_WHERE[name]}"), name)
    globals()[name] = value  # resolve once
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
