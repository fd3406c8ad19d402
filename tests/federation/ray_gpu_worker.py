"""One holder per GPU under Ray, on a CPU machine (for test_ray_placement.py; not collected).

Ray is started with 4 *logical* GPUs; start_holders (the code the Ray backend runs) creates 4 actors at
--ray-gpus-per-holder 1 with a stub in place of HolderActor that reports what Ray gave it. Prints JSON.
"""

import json
import os
import types

import ray

import securefed.federation.ray as fray


class Probe:
    def __init__(self, cfg, torch_threads):
        self.h = cfg.holder_id

    def ready(self):
        return {"holder": self.h, "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
                "cuda_visible": os.environ.get("CUDA_VISIBLE_DEVICES")}


if __name__ == "__main__":
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    ray.init(num_cpus=2, num_gpus=4, object_store_memory=80 << 20, include_dashboard=False, logging_level="ERROR")
    fray.HolderActor = Probe
    cfgs = {h: types.SimpleNamespace(holder_id=h, hardware=types.SimpleNamespace(torch_threads=1)) for h in (1, 2, 3, 4)}
    actors = fray.start_holders(cfgs, cpus=0.5, gpus=1.0, run_token="t")
    print(json.dumps(ray.get([a.ready.remote() for a in actors.values()], timeout=120)))
    ray.shutdown()
