"""Train-step throughput (fwd+bwd+Adam, channels_last, batch 32) of each backbone/size on this CPU.

Translates a GPU-measured recipe (images processed) into CPU minutes. Run: nice -n 10 python cpu_speed.py
"""
import json
import sys
import time

import timm
import torch

torch.set_num_threads(2)
res = {}
for name in sys.argv[1:] or ["mobilenetv2_100", "tf_efficientnet_lite0"]:
    for size in (128, 160, 192, 224):
        m = timm.create_model(name, num_classes=1).to(memory_format=torch.channels_last).train()
        opt = torch.optim.AdamW(m.parameters(), 1e-4)
        x = torch.randn(32, 3, size, size).to(memory_format=torch.channels_last)
        y = torch.randint(0, 2, (32,)).float()
        times = []
        for i in range(6):
            t = time.perf_counter()
            loss = torch.nn.functional.binary_cross_entropy_with_logits(m(x).squeeze(1), y)
            opt.zero_grad(); loss.backward(); opt.step()
            times.append(time.perf_counter() - t)
        m.eval()
        with torch.no_grad():
            t = time.perf_counter(); m(x); m(x); fwd = (time.perf_counter() - t) / 2
        step = min(times[1:])
        res[f"{name}@{size}"] = {"train_img_s": round(32 / step, 1), "eval_img_s": round(32 / fwd, 1)}
        print(name, size, res[f"{name}@{size}"], flush=True)
print(json.dumps(res))
