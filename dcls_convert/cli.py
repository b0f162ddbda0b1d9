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

__all__ = ["main"]


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _build_model(name: str, checkpoint: str | None, num_classes: int | None):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import timm  # here, not at the top: `--help` and `--version` stay instant

    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    if checkpoint is not None and not os.path.isfile(checkpoint):
        raise SystemExit(f"dcls-convert: checkpoint {checkpoint!r} not found")
    try:
        model = timm.create_model(name, pretrained=False, **kwargs)
    except Exception as exc:  # unknown names raise RuntimeError, malformed arguments TypeError/ValueError
        raise SystemExit(f"dcls-convert: cannot create timm model {name!r}: {type(exc).__name__}: "
                         f"{str(exc).splitlines()[0][:200]}") from None
    if checkpoint is not None:
        _load_weights(model, checkpoint)
    return model


def _load_weights(model, path: str) -> None:
    """safetensors or a weights-only torch file: no code from the checkpoint runs."""
    import torch

    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
                state = state["state_dict"]
    except Exception as exc:
        raise SystemExit(f"dcls-convert: cannot read {path!r} as a .safetensors or torch weights file "
                         f"({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else 'unreadable'})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise SystemExit(f"dcls-convert: {path!r} holds no state dict of tensors")
    try:
        model.load_state_dict(state)
    except Exception as exc:
        raise SystemExit(f"dcls-convert: the weights in {path!r} do not fit the model: {type(exc).__name__}: "
                         f"{str(exc).splitlines()[0][:300]}") from None


def _check_outputs(args) -> None:
    """Output paths checked before any long work: a conversion never runs only to fail at the write."""
    out = getattr(args, "out", None)
    if out is not None and os.path.exists(out) and not os.path.isdir(out):
        raise SystemExit(f"dcls-convert: --out {out!r} is an existing file, not a directory")
    json_path = getattr(args, "json", None)
    if json_path:
        parent = os.path.dirname(os.path.abspath(json_path))
        if not os.path.isdir(parent):
            raise SystemExit(f"dcls-convert: --json {json_path!r}: the folder {parent!r} does not exist")
        if os.path.isdir(json_path):
            raise SystemExit(f"dcls-convert: --json {json_path!r} is a directory")


def _parse_options(pairs: list[str]) -> dict:
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"dcls-convert: --option needs KEY=VALUE (e.g. --option window=21), got {pair!r}")
        options[key.replace("-", "_")] = _parse_value(value)
    return options


def _convert(args, dry_run: bool) -> int:
    import dcls_convert

    _check_outputs(args)
    options = _parse_options(args.option)
    if args.checkpoint is None:
        print(f"dcls-convert: no --checkpoint: converting {args.model} with random (untrained) weights",
              file=sys.stderr)
    model = _build_model(args.model, args.checkpoint, args.num_classes)
    for key in ("window", "kernel_count", "interpolation", "factor", "island", "wing_taps", "wing_spacing"):
        val = getattr(args, key, None)
        if val is not None:
            options[key] = val
    rules = None
    if args.all_convs:
        rules = dcls_convert.TargetRules(min_kernel=3)
    try:
        converted, report = dcls_convert.convert(model, args.method, rules=rules, include=args.include,
                                                 exclude=args.exclude, functional=args.functional, **options)
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
        print(f"wrote {os.path.join(args.out, 'model.safetensors')} and {os.path.join(args.out, 'recipe.json')}")
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
    _check_outputs(args)
    base_info = recipe.get("base") if isinstance(recipe.get("base"), dict) else {}
    name = args.model or base_info.get("timm")
    if not isinstance(name, str) or not name:
        print("dcls-convert: the recipe names no timm model (base.timm); pass --model", file=sys.stderr)
        return 2
    num_classes = base_info.get("num_classes")
    if num_classes is not None and (not isinstance(num_classes, int) or num_classes < 1):
        print(f"dcls-convert: the recipe's base.num_classes must be a positive int, got {num_classes!r}", file=sys.stderr)
        return 2
    base = _build_model(name, None, num_classes)
    try:
        model = dcls_convert.load(args.directory, base)
    except ValueError as exc:
        print(f"dcls-convert: {exc}", file=sys.stderr)
        return 2
    from dcls_convert.serialization import RECIPE_FILE, WEIGHTS_FILE, dense_recipe_of

    dense = dcls_convert.densify(model)
    os.makedirs(args.out, exist_ok=True)
    save_model(dense, os.path.join(args.out, WEIGHTS_FILE))
    with open(os.path.join(args.out, RECIPE_FILE), "w") as f:
        json.dump(dense_recipe_of(model, recipe.get("base")), f, indent=2)
    print(f"wrote {os.path.join(args.out, WEIGHTS_FILE)} and {os.path.join(args.out, RECIPE_FILE)}: {name} with plain "
          f"convs (the converted ones with their larger kernels). Load it with\n"
          f"  dcls_convert.load({args.out!r}, timm.create_model({name!r}))")
    return 0


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("dcls-convert")
    except PackageNotFoundError:
        return "unknown (not installed)"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dcls-convert", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = p.add_subparsers(dest="command", required=True)
    for cmd, help_text in (("convert", "convert and save"), ("report", "dry run: print what would be converted")):
        c = sub.add_parser(cmd, help=help_text)
        c.add_argument("model", help="timm model name")
        c.add_argument("--checkpoint", help="local weights (.safetensors or a torch weights-only file)")
        c.add_argument("--num-classes", type=int, default=None, help="classifier size of the timm model (default: its own)")
        c.add_argument("--method", default="dcls", choices=["dcls", "bloom", "partial"],
                       help="dcls: learned tap positions; bloom: interpolated dilation; partial: dense island + dilated wings")
        c.add_argument("--include", nargs="*", default=None, help="module-name regexes to convert")
        c.add_argument("--exclude", nargs="*", default=None, help="module-name regexes to leave alone")
        c.add_argument("--all-convs", action="store_true", help="any conv with kernel >= 3, not the method defaults")
        c.add_argument("--functional", action="store_true",
                       help="also convert conv calls in forward code (StdConv2d, F.conv2d(x, self.weight)) from the "
                            "weight each computes now")
        c.add_argument("--window", type=int, default=None, help="dcls: window size L (default max(extent, 2k+3): 17 for 7x7)")
        c.add_argument("--kernel-count", dest="kernel_count", type=int, default=None,
                       help="dcls: taps per kernel K (default k*k: exact start; fewer keeps the largest)")
        c.add_argument("--interpolation", default=None, help="dcls: tap interpolation (bilinear or gaussian)")
        c.add_argument("--factor", type=int, default=None, help="bloom: spreading factor s >= 2 (odd for even kernels)")
        c.add_argument("--island", type=int, default=None, help="partial: dense island size (odd; default the kernel size)")
        c.add_argument("--wing-taps", dest="wing_taps", type=int, default=None, help="partial: dilated taps on each side")
        c.add_argument("--wing-spacing", dest="wing_spacing", type=int, default=None, help="partial: spacing of the wing taps")
        c.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="any method option")
        c.add_argument("--json", help="also write the report as JSON here")
        if cmd == "convert":
            c.add_argument("--out", required=True, help="output directory")
    d = sub.add_parser("densify", help="fold a saved conversion back into plain convs")
    d.add_argument("directory", help="a directory written by `dcls-convert convert` (recipe.json + model.safetensors)")
    d.add_argument("--model", default=None, help="timm model name (default: from the recipe)")
    d.add_argument("--out", required=True, help="output directory (plain-conv weights and recipe)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "densify":
        return _densify(args)
    return _convert(args, dry_run=args.command == "report")


if __name__ == "__main__":
    sys.exit(main())
