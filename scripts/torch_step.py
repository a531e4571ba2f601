# PyTorch's peer of `pirlkit bench`, on the CPU or a GPU; one JSON line in the
# shape of pirlkit bench's lines, with the process's peak resident memory.
#   --what train     the ResNet training step (torchvision ResNet, d->128
#                    head, BatchNorm in train mode, squared-output loss, AdamW)
#   --what finetune  the fine-tuning step (d->1 head, BCE with pos_weight 4,
#                    AdamW 3e-4, weight decay 1e-2)
#   --what features  frozen-feature extraction (eval mode, torch.no_grad, the
#                    pooled 512-d output copied to the host as numpy)
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
p.add_argument("--what", default="train", choices=["train", "finetune", "features"])
a = p.parse_args()

if a.threads:
    torch.set_num_threads(a.threads)
dev = torch.device(a.device)
torch.backends.cuda.matmul.allow_tf32 = a.tf32
torch.backends.cudnn.allow_tf32 = a.tf32
torch.manual_seed(0)
m = getattr(torchvision.models, a.arch)()
if a.what == "train":
    m.fc = torch.nn.Linear(m.fc.in_features, 128)
elif a.what == "finetune":
    m.fc = torch.nn.Linear(m.fc.in_features, 1)
else:
    m.fc = torch.nn.Identity()
m = m.to(dev).train(a.what != "features")
if a.what == "finetune":
    opt = torch.optim.AdamW(m.parameters(), lr=3e-4, weight_decay=1e-2)
    y = (torch.arange(a.batch, device=dev) % 2).float()
    bce = torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor(4.0, device=dev))
else:
    opt = torch.optim.AdamW(m.parameters(), lr=1e-4)
x = torch.randn(a.batch, 3, a.size, a.size, device=dev)


def sync():
    if dev.type == "cuda":
        torch.cuda.synchronize()


def peak_mib():
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None


try:  # the peak from here on, as pirlkit bench measures it
    open("/proc/self/clear_refs", "w").write("5")
except OSError:
    pass
steps, fwd = [], []
for i in range(a.steps + 2):
    sync()
    t0 = time.perf_counter()
    if a.what == "features":
        with torch.no_grad():
            m(x).cpu().numpy()
        t1 = time.perf_counter()
    else:
        out = m(x)
        loss = bce(out.flatten(), y) if a.what == "finetune" else out.pow(2).mean()
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
name = {"train": "resnet-train-step", "finetune": "finetune-step", "features": "features"}[a.what]
print(json.dumps({
    "what": "torch-" + name, "torch": torch.__version__, "arch": a.arch,
    "batch": a.batch, "size": a.size, "threads": torch.get_num_threads(),
    "device": a.device, "tf32": a.tf32, "steps": a.steps, "median_s": t,
    "images_per_s": a.batch / t,
    "forward_median_s": med(fwd) if a.what == "train" else None,
    "peak_rss_mib": peak_mib(),
    "gpu": torch.cuda.get_device_name(0) if dev.type == "cuda" else None,
}))
