"""The federation layer imports without torch, transformers or Lightning (benchmarks/import_time.md).

Lightning Fabric alone costs ~5 s of CPU to import (its version check imports torchmetrics, and through
it transformers, scipy.signal and matplotlib; its wrappers import torch._dynamo). The wire messages and
the holder's config once took TrainConfig / DPSGDConfig from securefed.training.trainer, so every holder,
coordinator and Ray actor process paid that at startup, and a holder refused for a bad config paid it
before saying so. They are imported from securefed.training.config (torch-free) now; the trainer, and
with it Lightning, is imported where a trainer is built."""

import json
import os
import subprocess
import sys

HEAVY = ("torch", "transformers", "lightning", "torchmetrics", "matplotlib")

PROBE = """
import json, sys
import securefed.federation.client, securefed.federation.server, securefed.federation.holder
import securefed.federation.simulation, securefed.federation.messages, securefed.federation.holder_config
from securefed.cli import main
code = main(["client", "--config", sys.argv[1]])
heavy = sorted({m.split(".")[0] for m in sys.modules} & set(%r))
print(json.dumps({"code": code, "heavy": heavy}))
"""


def test_federation_startup_imports_nothing_heavy(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    out = subprocess.run([sys.executable, "-c", PROBE % (HEAVY,), str(tmp_path / "missing.yaml")], capture_output=True,
                         text=True, env=env, timeout=120)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res == {"code": 2, "heavy": []}, out.stderr   # a missing holder config: exit 2, before anything heavy
    assert "securefed client: " in out.stderr
