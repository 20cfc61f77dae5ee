import torch, torch.nn as nn, sys
from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import XNNPACKQuantizer, get_symmetric_quantization_config
from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
from executorch.exir import to_edge_transform_and_lower
torch.manual_seed(0)
m = nn.Sequential(nn.Linear(768, 3072), nn.Linear(3072, 768)).eval()
x = torch.randn(1, 197, 768)
dynamic = sys.argv[1] == "dynamic"
cfg = get_symmetric_quantization_config(is_per_channel=True, is_dynamic=dynamic)
q = XNNPACKQuantizer().set_module_type(nn.Linear, cfg)
p = prepare_pt2e(torch.export.export(m, (x,)).module(), q)
with torch.no_grad(): p(x)
ep = torch.export.export(convert_pt2e(p), (x,))
prog = to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner()]).to_executorch()
open(f"{sys.argv[1]}.pte", "wb").write(prog.buffer)
print("ok", len(prog.buffer))
