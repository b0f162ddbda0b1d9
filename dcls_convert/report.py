"""What a conversion did, per conv and in total: a readable table (rich), a dict/JSON form, and the error
raised when nothing matched."""
from __future__ import annotations

import io
import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["LayerRecord", "ConversionReport", "NoTargetError", "ConversionError"]


class NoTargetError(ValueError):
    """No conv in the model matched the targeting rules."""


class ConversionError(RuntimeError):
    """Building a replacement failed; the model was left untouched."""


@dataclass
class LayerRecord:
    name: str
    conv: str                        # e.g. "Conv2d(96, 96, k=(7, 7), g=96)"
    status: str                      # "converted" or "skipped"
    reason: str = ""
    method: str = ""
    module: str = ""
    aliases: list[str] = field(default_factory=list)
    receptive_field: tuple[int, ...] | None = None
    kernel_size: tuple[int, ...] | None = None
    params_before: int = 0
    params_after: int = 0
    init_error: float | None = None
    engine: str = ""
    calls: int | None = None
    input_shape: tuple[int, ...] | None = None
    origin: str = ""                 # for a functional conv call: where it is and how its weight was taken
    rewrote: str = ""                # the module rewritten as the GraphModule of its forward to convert this call


@dataclass
class ConversionReport:
    method: str
    layers: list[LayerRecord] = field(default_factory=list)
    functional_convs: list[str] = field(default_factory=list)  # F.conv* call sites left alone (functional=False)
    trace_error: str | None = None   # modules whose forward names a conv call but could not be traced
    output_error: float | None = None  # the model's relative output error on convert's example_inputs

    @property
    def converted(self) -> list[LayerRecord]:
        return [r for r in self.layers if r.status == "converted"]

    @property
    def skipped(self) -> list[LayerRecord]:
        return [r for r in self.layers if r.status == "skipped"]

    def totals(self) -> dict[str, Any]:
        conv = self.converted
        errs = [r.init_error for r in conv if r.init_error is not None]
        return {
            "converted": len(conv),
            "skipped": len(self.skipped),
            "params_before": sum(r.params_before for r in conv),
            "params_after": sum(r.params_after for r in conv),
            "max_init_error": max(errs) if errs else None,
        }

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "totals": self.totals(), "layers": [asdict(r) for r in self.layers],
                "functional_convs": list(self.functional_convs), "trace_error": self.trace_error,
                "output_error": self.output_error if self.output_error is None or math.isfinite(self.output_error)
                else None}  # JSON has no inf

    def to_json(self, **kwargs) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    def __str__(self) -> str:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"dcls_convert: method={self.method!r}", show_lines=False)
        for col in ("layer", "source", "status", "kernel -> window", "params", "init err", "engine / reason"):
            table.add_column(col, overflow="fold")
        for r in self.layers:
            if r.status == "converted":
                rf = f"{_dims(r.kernel_size)} -> {_dims(r.receptive_field)}"
                params = f"{r.params_before} -> {r.params_after}"
                err = f"{r.init_error:.1e}" if r.init_error is not None else ""
                table.add_row(r.name, r.conv, "[green]converted", rf, params, err, r.engine)
            else:
                table.add_row(r.name, r.conv, "[yellow]skipped", "", "", "", r.reason)
        t = self.totals()
        conv = self.converted
        err = f"{t['max_init_error']:.1e}" if t["max_init_error"] is not None else "-"
        buf = io.StringIO()
        console = Console(file=buf, width=140, force_terminal=False, color_system=None)
        console.print(table)
        console.print(f"converted {t['converted']}, skipped {t['skipped']}; parameters of converted convs "
                      f"{t['params_before']} -> {t['params_after']}; max init error {err}")
        if self.output_error is not None:
            console.print(f"model output on the example inputs: relative error {self.output_error:.1e} (converted vs "
                          "original, eval mode)")
        calls = [r for r in conv if r.origin]
        if calls:
            owners = {r.rewrote for r in calls if r.rewrote}
            console.print(f"{len(calls)} conv(s) converted from the weight their forward computed at conversion time "
                          "(outputs preserved then; a weight transform such as standardisation is not applied "
                          f"afterwards); {len(owners)} module(s) rewritten as the torch.fx GraphModule of their forward")
        if self.functional_convs:
            console.print(f"functional conv call sites (not converted; functional=True converts them): "
                          f"{'; '.join(self.functional_convs)}")
        if self.trace_error:
            console.print(f"not traced: {self.trace_error}")
        return buf.getvalue().rstrip()

    def __repr__(self) -> str:
        t = self.totals()
        return f"ConversionReport(method={self.method!r}, converted={t['converted']}, skipped={t['skipped']})"


def _dims(v) -> str:
    return "x".join(str(x) for x in v) if v else "?"
