import torch, sys, time
from executorch.runtime import Runtime
rt = Runtime.get()
prog = rt.load_program(f"{sys.argv[1]}.pte")
meth = prog.load_method("forward")
x = torch.randn(1, 197, 768)
for _ in range(3): meth.execute([x])
n = int(sys.argv[2]) if len(sys.argv) > 2 else 200
t = time.perf_counter()
for _ in range(n): meth.execute([x])
dt = (time.perf_counter() - t) / n
ops = 2 * 197 * 768 * 3072 * 2
print(f"{sys.argv[1]}: {dt*1e3:.3f} ms/iter, {ops/dt/1e9:.0f} GOP/s (this AMD dev host)")
