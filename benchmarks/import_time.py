"""Startup import cost of securefed processes: min of N runs, wall and CPU (user+sys) of each child process.

    git archive <before-commit> securefed | tar -x -C /tmp/before
    .venv/bin/python benchmarks/import_time.py /tmp/before . [N]

Each command runs with PYTHONPATH set to one tree (cwd /tmp, so '' on sys.path finds neither), before and
after alternating, so both see the same machine load. Results: benchmarks/import_time.md."""

import os
import resource
import subprocess
import sys
import time

PY = sys.executable
SF = os.path.join(os.path.dirname(PY), "securefed")
CMDS = {
    "import lightning.fabric": [PY, "-c", "import lightning.fabric"],
    "securefed --help": [SF, "--help"],
    "import securefed.training.trainer": [PY, "-c", "import securefed.training.trainer"],
    "import ...federation.holder + ...training.trainer": [PY, "-c", "import securefed.federation.holder; "
                                                          "import securefed.training.trainer"],
    "import securefed.federation.client": [PY, "-c", "import securefed.federation.client"],
    "import securefed.federation.server": [PY, "-c", "import securefed.federation.server"],
    "Ray holder actor's imports": [PY, "-c", "import securefed.federation.ray, securefed.federation.holder"],
    "securefed client --config /nonexistent.yaml (exit 2)": [SF, "client", "--config", "/nonexistent.yaml"],
}


def main() -> None:
    trees = {"before": os.path.abspath(sys.argv[1]), "after": os.path.abspath(sys.argv[2])}
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    print("| command | before wall | after wall | before CPU | after CPU |\n|---|---|---|---|---|")
    for name, argv in CMDS.items():
        res: dict[str, list[tuple[float, float]]] = {t: [] for t in trees}
        for _ in range(n):
            for tree, path in trees.items():
                env = dict(os.environ, PYTHONPATH=path)
                r0, t0 = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
                subprocess.run(argv, env=env, cwd="/tmp", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                wall, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_CHILDREN)
                res[tree].append((wall, r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime))
        w = {t: min(x[0] for x in v) for t, v in res.items()}
        c = {t: min(x[1] for x in v) for t, v in res.items()}
        print(f"| `{name}` | {w['before']:.2f} s | {w['after']:.2f} s | {c['before']:.2f} s | {c['after']:.2f} s |",
              flush=True)


if __name__ == "__main__":
    main()
