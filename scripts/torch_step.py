# PyTorch's ResNet training step, the peer of `pirlkit bench` (same model:
# torchvision ResNet with a d->128 head, BatchNorm in train mode, a squared
# output loss, AdamW), on the CPU or a GPU. Prints one JSON line, in the shape
# of pirlkit bench's lines.
#
#   python3 scripts/torch_step.py --device cuda --arch resnet50 --batch 256 --size 224 [--tf32] [--steps 10]
import argparse, json, time

import torch
import torchvision

p = argparse.ArgumentParser()
p.add_argument("--device", default="cpu")
p.add_argument("--arch", default="resnet18")
p.add_argument("--batch", type=int, default=32)
p.add_argument("--size", type=int, default=64)
p.add_argument("--steps", type=int, default=10)
p.add_argument("--threads", type=int, default=0)
p.add_argument("--tf32", action="store_true")
a = p.parse_args()

if a.threads:
    torch.set_num_threads(a.threads)
dev = torch.device(a.device)
torch.backends.cuda.matmul.allow_tf32 = a.tf32
torch.backends.cudnn.allow_tf32 = a.tf32
torch.manual_seed(0)
m = getattr(torchvision.models, a.arch)()
m.fc = torch.nn.Linear(m.fc.in_features, 128)
m = m.to(dev).train()
opt = torch.optim.AdamW(m.parameters(), lr=1e-4)
x = torch.randn(a.batch, 3, a.size, a.size, device=dev)


def sync():
    if dev.type == "cuda":
        torch.cuda.synchronize()


steps, fwd = [], []
for i in range(a.steps + 2):
    sync()
    t0 = time.perf_counter()
    loss = m(x).pow(2).mean()
    loss.item()
    t1 = time.perf_counter()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    sync()
    t2 = time.perf_counter()
    if i >= 2:
        steps.append(t2 - t0)
        fwd.append(t1 - t0)
med = lambda v: sorted(v)[len(v) // 2]
t = med(steps)
print(json.dumps({
    "what": "torch-resnet-train-step", "torch": torch.__version__, "arch": a.arch,
    "batch": a.batch, "size": a.size, "threads": torch.get_num_threads(),
    "device": a.device, "tf32": a.tf32, "steps": a.steps, "median_s": t,
    "images_per_s": a.batch / t, "forward_median_s": med(fwd),
    "gpu": torch.cuda.get_device_name(0) if dev.type == "cuda" else None,
}))
