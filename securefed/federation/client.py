"""One data holder of a networked federation: the Holder role over the gRPC channel (`securefed client`)."""

from __future__ import annotations

import logging
import sys

from securefed.federation.grpc import EXIT, run_holder

__all__ = ["main"]

log = logging.getLogger("securefed.holder")


def main(config: str, *, overrides=(), server: str | None = None, simulation: bool = False) -> int:
    """Load and check this holder's own config, its keys and data, then take part; an exit code."""
    from securefed.configio import ConfigError
    from securefed.federation.holder import Holder, HolderStateError
    from securefed.federation.holder_config import (HolderConfigError, check_holder_config, check_server_address,
                                                    load_holder_config)
    from securefed.runtime.rundir import WriteError
    from securefed.secagg import Roster, RosterError
    from securefed.training.data import DataError
    from securefed.transport.pki import Layout, check_tls_files, holder_id_from_cert, load_identity
    from securefed.transport.service import load_client_credentials

    def usage(msg: str) -> int:
        print(f"securefed client: {msg}", file=sys.stderr)
        return EXIT["usage"]

    try:
        cfg = load_holder_config(config, overrides)
        check_holder_config(cfg, deployment=True, simulation=simulation)
        if server is not None:
            check_server_address(server, "--server")
        lay = Layout(cfg.pki)
        d = lay.holder_dir(cfg.holder_id)
        if holder_id_from_cert((d / "cert.pem").read_bytes()) != cfg.holder_id:
            raise HolderConfigError(f"the certificate in {d} does not name holder {cfg.holder_id}")
        identity = load_identity(lay.holder_identity(cfg.holder_id))
        roster = Roster.load(lay.roster)
        ca = d / "ca.pem" if (d / "ca.pem").exists() else lay.ca_cert
        key = lay.holder_key(cfg.holder_id)
        tls_warnings = check_tls_files(cert=d / "cert.pem", key=key, ca=ca)   # TlsFilesError: exit 2
        creds = load_client_credentials(cert=d / "cert.pem", key=key, ca=ca)
    except (HolderConfigError, ConfigError, RosterError, PermissionError, ValueError, OSError) as e:
        return usage(str(e))
    for w in tls_warnings:
        log.warning("holder %d: %s", cfg.holder_id, w)
    if cfg.hardware.devices > 1:
        # Fabric's launcher re-runs this process once per extra device: each copy would join as this holder (same
        # identity, same state_dir) — the Holder does not drive worker ranks yet (simulate refuses it likewise)
        return usage(f"hardware.devices={cfg.hardware.devices}: a holder on several devices is not yet part of a "
                     "federation run (it trains and is measured by benchmarks/gpu/fsdp.py; README: Holders bigger "
                     f"than one GPU); set hardware.devices to 1 in {config}")
    if cfg.hardware.accelerator == "cuda":   # else Fabric raised it as a traceback (exit 1) after the holder had joined
        import torch

        have = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if have < cfg.hardware.devices:
            return usage(f"hardware.accelerator is cuda with hardware.devices {cfg.hardware.devices}, but this machine "
                         f"has {have} usable CUDA device(s): set hardware.accelerator to auto or cpu in {config}, or "
                         "lower hardware.devices")
    if cfg.hardware.torch_threads:
        import torch

        torch.set_num_threads(cfg.hardware.torch_threads)
    try:
        holder = Holder(cfg, identity=identity, roster=roster)
        holder.check_state()    # its own state files readable: one clear error now, not retries later
        holder.prepare_data()   # this holder's own data, before anything is sent
    except (HolderStateError, WriteError) as e:   # its own state_dir: unreadable, inconsistent, or cannot be written
        print(f"securefed client: refusing to start: {e}", file=sys.stderr)
        return EXIT["state"]
    except (DataError, ValueError, OSError) as e:
        return usage(str(e))
    return run_holder(holder, target=server or cfg.server, creds=creds, server_name=cfg.server_name,
                      max_failures=cfg.max_failures, patience_s=cfg.patience_s)
