"""`dcls-convert`: convert / report / densify timm models and saved conversions from the command line.

  dcls-convert convert convnext_tiny --method dcls --kernel-count 34 --out out/convnext_dcls
  dcls-convert convert resnet18 --checkpoint weights.safetensors --method bloom --out out/r18_bloom
  dcls-convert report convnext_tiny --method partial          # dry run: print the report only
  dcls-convert densify out/convnext_dcls --out out/convnext_dense
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import torch

__all__ = ["main"]


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _build_model(name: str, checkpoint: str | None, num_classes: int | None):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import timm

    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    if checkpoint is not None and not os.path.isfile(checkpoint):
        raise SystemExit(f"dcls-convert: checkpoint {checkpoint!r} not found")
    try:
        model = timm.create_model(name, pretrained=False, **kwargs)
    except RuntimeError as exc:
        raise SystemExit(f"dcls-convert: cannot create timm model {name!r}: {exc}") from None
    if checkpoint is not None:
        _load_weights(model, checkpoint)
    return model


def _load_weights(model, path: str) -> None:
    """safetensors or a weights-only torch file: no code from the checkpoint runs."""
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
                state = state["state_dict"]
        model.load_state_dict(state)
    except Exception as exc:
        raise SystemExit(f"dcls-convert: cannot load {path!r} into the model: {type(exc).__name__}: "
                         f"{str(exc).splitlines()[0][:300]}") from None


def _convert(args, dry_run: bool) -> int:
    import dcls_convert

    model = _build_model(args.model, args.checkpoint, args.num_classes)
    options = {k: _parse_value(v) for k, v in (o.split("=", 1) for o in args.option)}
    for key in ("window", "kernel_count", "interpolation", "factor", "island", "wing_taps", "wing_spacing"):
        val = getattr(args, key, None)
        if val is not None:
            options[key] = val
    rules = None
    if args.all_convs:
        rules = dcls_convert.TargetRules(min_kernel=3)
    try:
        converted, report = dcls_convert.convert(model, args.method, rules=rules, include=args.include,
                                                 exclude=args.exclude, **options)
    except (ValueError, TypeError, RuntimeError) as exc:
        print(f"dcls-convert: {exc}", file=sys.stderr)
        return 2
    print(report)
    if args.json:
        with open(args.json, "w") as f:
            f.write(report.to_json(indent=2))
    if not dry_run:
        base = {"timm": args.model}
        if args.num_classes is not None:
            base["num_classes"] = args.num_classes
        dcls_convert.save(converted, args.out, base=base)
        print(f"wrote {args.out}/model.safetensors and {args.out}/recipe.json")
    return 0


def _densify(args) -> int:
    import dcls_convert
    from dcls_convert.serialization import read_recipe
    from safetensors.torch import save_model

    try:
        recipe = read_recipe(args.directory)
    except (ValueError, FileNotFoundError) as exc:
        print(f"dcls-convert: {exc}", file=sys.stderr)
        return 2
    name = args.model or recipe.get("base", {}).get("timm")
    if not name:
        print("dcls-convert: the recipe names no timm model; pass --model", file=sys.stderr)
        return 2
    base = _build_model(name, None, recipe.get("base", {}).get("num_classes"))
    try:
        model = dcls_convert.load(args.directory, base)
    except ValueError as exc:
        print(f"dcls-convert: {exc}", file=sys.stderr)
        return 2
    dense = dcls_convert.densify(model)
    os.makedirs(args.out, exist_ok=True)
    save_model(dense, os.path.join(args.out, "model.safetensors"))
    print(f"wrote {args.out}/model.safetensors: plain {name} with {sum(1 for _ in dense.modules())} modules; "
          f"load it with timm.create_model({name!r}, pretrained_cfg_overlay=dict(file=...)) after adjusting "
          "kernel sizes, or with dcls_convert.load for the converted form")
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dcls-convert", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    for cmd, help_text in (("convert", "convert and save"), ("report", "dry run: print what would be converted")):
        c = sub.add_parser(cmd, help=help_text)
        c.add_argument("model", help="timm model name")
        c.add_argument("--checkpoint", help="local weights (.safetensors or a torch weights-only file)")
        c.add_argument("--num-classes", type=int, default=None)
        c.add_argument("--method", default="dcls", choices=["dcls", "bloom", "partial"])
        c.add_argument("--include", nargs="*", default=None, help="module-name regexes to convert")
        c.add_argument("--exclude", nargs="*", default=None, help="module-name regexes to leave alone")
        c.add_argument("--all-convs", action="store_true", help="any conv with kernel >= 3, not the method defaults")
        c.add_argument("--window", type=int, default=None)
        c.add_argument("--kernel-count", dest="kernel_count", type=int, default=None)
        c.add_argument("--interpolation", default=None, choices=["bilinear", "gaussian"])
        c.add_argument("--factor", type=int, default=None)
        c.add_argument("--island", type=int, default=None)
        c.add_argument("--wing-taps", dest="wing_taps", type=int, default=None)
        c.add_argument("--wing-spacing", dest="wing_spacing", type=int, default=None)
        c.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="any method option")
        c.add_argument("--json", help="also write the report as JSON here")
        if cmd == "convert":
            c.add_argument("--out", required=True, help="output directory")
    d = sub.add_parser("densify", help="fold a saved conversion back into plain convs")
    d.add_argument("directory")
    d.add_argument("--model", default=None, help="timm model name (default: from the recipe)")
    d.add_argument("--out", required=True)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "densify":
        return _densify(args)
    return _convert(args, dry_run=args.command == "report")


if __name__ == "__main__":
    sys.exit(main())
