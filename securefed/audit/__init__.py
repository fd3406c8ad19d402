"""Security review suite and empirical privacy audit (issue 7; audits/README.md).

    run_audit(profile, out)  -> result dict; writes out/report.{md,html,json} and out/config.json
    SCENARIOS                -> the attack scenarios, each a function returning a Finding
    one_run_audit(...)       -> ε lower bound from canary holders (Steinke, Nasr, Jagielski 2023)
    exposure(model, canaries)-> Secret Sharer exposure (Carlini et al. 2019)

Layer 8 (tests/test_layering.py): it drives secagg, privacy and the federation engine, and is driven by the CLI only.
"""

from securefed.audit.findings import MITIGATED, RESIDUAL, VULNERABLE, Finding
from securefed.audit.suite import SCENARIOS, run_audit, run_security

__all__ = ["MITIGATED", "RESIDUAL", "VULNERABLE", "Finding", "SCENARIOS", "run_audit", "run_security"]
