# Stop 43: a plain round's host passes, the copies before (old) and in place / without a copy (new), 4 holders
# at 52.2M coordinates (the demo-vocabulary 75m model), alternated 4 times:
#   .venv/bin/python benchmarks/secagg/plain_passes.py
# On this 2-core machine: holder side (w·Δ, clip, bytes) 1.256 -> 0.793 s for the 4 holders; coordinator
# 0.728 -> 0.726 s (no change: the allocator reuses the previous holder's freed vector).
import time, numpy as np, statistics
from securefed.privacy.clipping import l2_clip
from securefed.primitives.spans import for_spans
dim=52_196_480
rng=np.random.default_rng(0)
base=[(rng.standard_normal(dim).astype(np.float32)*1e-4) for _ in range(4)]
def holder(old):
    outs=[]
    t=time.perf_counter()
    for b in base:
        d=b.copy()   # the trainer's fresh Δ (not timed separately: same in both)
        t0=time.perf_counter()
        if old:
            x,_=l2_clip(d*np.float32(0.5),1e6)
        else:
            np.multiply(d,np.float32(0.5),out=d); x,_=l2_clip(d,1e6,inplace=True)
        outs.append((x.tobytes(), time.perf_counter()-t0))
    return outs
def coord(bs, old):
    t=time.perf_counter()
    total=np.zeros(dim)
    for b in bs:
        x=np.frombuffer(b,dtype="<f4")
        y=l2_clip(x,1e6)[0] if old else l2_clip(x,1e6,copy=False)[0]
        for_spans(dim, lambda lo,hi,y=y: np.add(total[lo:hi], y[lo:hi], out=total[lo:hi]))
    out=np.empty(dim,np.float32)
    for_spans(dim, lambda lo,hi: np.copyto(out[lo:hi], total[lo:hi], casting="unsafe"))
    return time.perf_counter()-t
res={True:[],False:[]}
for rep in range(4):
    for old in (True, False):
        hs=holder(old); ht=sum(t for _,t in hs)
        ct=coord([b for b,_ in hs], old)
        res[old].append((ht,ct))
for old in (True,False):
    print("old" if old else "new",
          "holder-side (4 holders) median", round(statistics.median(h for h, _ in res[old]), 3),
          "coordinator median", round(statistics.median(c for _, c in res[old]), 3))
