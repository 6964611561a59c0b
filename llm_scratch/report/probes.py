"""The training-health probes of a sweep (``probes/<name>/block<i>``, ``probes/grad_norm``,
``probes/clipped`` in metrics.csv): per group, the mean over its seeds with a band from their
minimum to their maximum, per layer and step; drawn as heat maps and chosen layers' curves.

Runs without probes, or with probe columns the report cannot read, simply have no probe section.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np

# llm_scratch.train.probes.BLOCK_PROBES (not imported: the report loads no torch or Lightning)
BLOCK_PROBES = ("grad_norm", "update_ratio", "resid_rms", "attn_entropy")
# the layer key of a value of the whole model (probes/grad_norm, probes/clipped)
MODEL = "model"
DESCRIPTIONS = {
    "grad_norm": "gradient norm of the block's parameters (before clipping)",
    "update_ratio": "RMS(optimizer update) / RMS(weights)",
    "resid_rms": "RMS of the block's output (the residual stream)",
    "attn_entropy": "attention entropy (nats; mean over heads and positions)",
    "clipped": "whether gradient clipping fired (mean over seeds: the fraction that clipped)",
}
# spans orders of magnitude: a log colour scale and axis
_LOG_SCALE = ("grad_norm", "update_ratio")
_COLUMN = re.compile(r"probes/(?P<name>[a-z_]+)(?:/block(?P<layer>\d+))?")

Series = dict[str, dict[str, dict[int, float]]]  # probe -> layer key -> step -> value


def seeds_label(n: int) -> str:
    """What a plotted group curve is: one seed's, or the mean of ``n`` seeds'."""
    return "1 seed" if n == 1 else f"mean of {n} seeds"


def read_probes(rows: list[dict[str, str]]) -> Series:
    """The probe values of metrics.csv's rows: {probe: {"block<i>" or "model": {step: value}}};
    a cell that is not a finite number, or a column that is not a probe's, is skipped."""
    series: Series = {}
    for row in rows:
        try:
            step = int(row.get("step") or "")
        except (TypeError, ValueError):
            continue
        for column, cell in row.items():
            match = _COLUMN.fullmatch(column or "")
            if not match or not cell:
                continue
            try:
                value = float(cell)
            except (TypeError, ValueError):
                continue
            if not math.isfinite(value):
                continue
            layer = match["layer"]
            key = MODEL if layer is None else f"block{int(layer)}"
            series.setdefault(match["name"], {}).setdefault(key, {})[step] = value
    return series


def merge(earlier: Series, until: int, later: Series) -> Series:
    """A continued run's probes: its predecessor's up to step ``until``, then its own."""
    merged: Series = {}
    for series, keep in ((earlier, lambda s: s <= until), (later, lambda s: True)):
        for name, layers in series.items():
            for layer, points in layers.items():
                target = merged.setdefault(name, {}).setdefault(layer, {})
                target.update({s: v for s, v in points.items() if keep(s)})
    return merged


def _layer_order(key: str) -> tuple[int, int]:
    return (1, 0) if key == MODEL else (0, int(key.removeprefix("block")))


def _probe_order(name: str) -> tuple[int, str]:
    order = (*BLOCK_PROBES, "clipped")
    return (order.index(name), "") if name in order else (len(order), name)


def group_probes(group: Any) -> dict[str, dict[str, dict[str, Any]]]:
    """``group`` (a groups.Group, not imported: groups.py imports collect.py, which reads the
    probes with this module) and its probes: per probe and layer, at each step every finished seed logged, the
    mean over the seeds and the band (their minimum and maximum); {} where none logged any."""
    jobs = [job for job in group.finished if job.probes]
    result: dict[str, dict[str, dict[str, Any]]] = {}
    names = sorted({name for job in jobs for name in job.probes}, key=_probe_order)
    for name in names:
        layers = {layer for job in jobs for layer in job.probes.get(name, {})}
        for layer in sorted(layers, key=_layer_order):
            curves = [job.probes[name][layer] for job in jobs if layer in job.probes.get(name, {})]
            steps = sorted(set.intersection(*(set(c) for c in curves)))
            if not steps:
                continue
            values = [[c[s] for c in curves] for s in steps]
            result.setdefault(name, {})[layer] = {
                "steps": steps,
                "mean": [math.fsum(v) / len(v) for v in values],
                "min": [min(v) for v in values],
                "max": [max(v) for v in values],
                "n": len(curves),
            }
    return result


def probes_data(groups: list[Any]) -> dict[str, Any] | None:
    """What report.json holds under ``probes``; None when no group has any."""
    per_group = [(group, group_probes(group)) for group in groups]
    if not any(probes for _, probes in per_group):
        return None
    return {
        "band": "min to max over the group's seeds",
        "descriptions": DESCRIPTIONS,
        "groups": [
            {"label": group.label, "seeds": group.seeds, "probes": probes}
            for group, probes in per_group
            if probes
        ],
    }


def _chosen_layers(layers: list[str]) -> list[str]:
    """The first, middle and last block (fewer where there are fewer)."""
    blocks = [layer for layer in layers if layer != MODEL]
    if len(blocks) <= 3:
        return blocks
    return [blocks[0], blocks[len(blocks) // 2], blocks[-1]]


def plot_heatmaps(name: str, data: dict[str, Any], path: Path, save) -> bool:
    """One PNG: per group, the probe's mean over seeds as a heat map of layer by step, one
    colour scale for all groups (logarithmic for gradient norms and update ratios)."""
    import matplotlib.pyplot as plt  # write.py chose the Agg backend
    from matplotlib.colors import LogNorm

    panels = []
    for entry in data["groups"]:
        layers = [k for k in sorted(entry["probes"].get(name, {}), key=_layer_order) if k != MODEL]
        if layers:
            panels.append((entry["label"], layers, entry["probes"][name]))
    if not panels:
        return False
    values = [v for _, layers, p in panels for k in layers for v in p[k]["mean"]]
    log = name in _LOG_SCALE and min(values) > 0
    low, high = min(values), max(values)
    if high <= low:
        high = low + (abs(low) or 1.0) * 1e-6
    norm = LogNorm(low, high) if log else plt.Normalize(low, high)
    fig, axes = plt.subplots(
        len(panels), 1, figsize=(6.4, 1.0 + 1.3 * len(panels)), dpi=100, squeeze=False
    )
    for ax, (label, layers, probe) in zip(axes[:, 0], panels, strict=True):
        steps = sorted(set.union(*(set(probe[k]["steps"]) for k in layers)))
        grid = np.full((len(layers), len(steps)), np.nan)
        for row, layer in enumerate(layers):
            column = {s: i for i, s in enumerate(steps)}
            for step, mean in zip(probe[layer]["steps"], probe[layer]["mean"], strict=True):
                grid[row, column[step]] = mean
        image = ax.imshow(
            grid, aspect="auto", origin="lower", interpolation="nearest", norm=norm, cmap="viridis"
        )
        ax.set_yticks(range(len(layers)), [k.removeprefix("block") for k in layers], fontsize=7)
        ticks = np.linspace(0, len(steps) - 1, min(len(steps), 6)).round().astype(int)
        ax.set_xticks(ticks, [str(steps[i]) for i in ticks], fontsize=7)
        ax.set_ylabel("block", fontsize=8)
        ax.set_title(f"{label} ({seeds_label(probe[layers[0]]['n'])})", fontsize=8)
        # a bar beside each panel (the same scale): one spanning them all overlaps them
        fig.colorbar(image, ax=ax, pad=0.02).ax.tick_params(labelsize=7)
    axes[-1, 0].set_xlabel("optimizer step")
    fig.suptitle(f"{name}: {DESCRIPTIONS.get(name, name)}", fontsize=9)
    save(fig, path)
    return True


def plot_layers(name: str, data: dict[str, Any], path: Path, save) -> bool:
    """One PNG: the probe over steps at chosen layers (first, middle, last block; or the whole
    model's value), one panel each, one line per group: the mean over its seeds with a band
    from their minimum to their maximum."""
    import matplotlib.pyplot as plt

    layers: list[str] = []
    for entry in data["groups"]:
        layers += [k for k in entry["probes"].get(name, {}) if k not in layers]
    layers = sorted(layers, key=_layer_order)
    chosen = _chosen_layers(layers) + [k for k in layers if k == MODEL]
    if not chosen:
        return False
    fig, axes = plt.subplots(
        1, len(chosen), figsize=(3.2 * len(chosen) + 0.6, 3.2), dpi=100, squeeze=False
    )
    for ax, layer in zip(axes[0], chosen, strict=True):
        for entry in data["groups"]:
            series = entry["probes"].get(name, {}).get(layer)
            if not series:
                continue
            marker = "o" if len(series["steps"]) < 2 else None
            line = ax.plot(
                series["steps"], series["mean"], label=entry["label"], marker=marker, lw=1.2
            )[0]
            if series["n"] > 1:
                ax.fill_between(
                    series["steps"],
                    series["min"],
                    series["max"],
                    color=line.get_color(),
                    alpha=0.2,
                    linewidth=0,
                )
        if name in _LOG_SCALE:
            ax.set_yscale("log")
        ax.set_title(
            "whole model" if layer == MODEL else layer.replace("block", "block "), fontsize=8
        )
        ax.set_xlabel("optimizer step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel(name, fontsize=8)
    axes[0, -1].legend(fontsize=6)
    fig.suptitle(
        f"{name}: {DESCRIPTIONS.get(name, name)}\n(lines: mean over seeds; bands: min to max)",
        fontsize=9,
    )
    save(fig, path)
    return True


def probes_section(data: dict[str, Any] | None, out_dir: Path, save) -> list[str]:
    """report.md's probe section, with its PNGs written to ``out_dir``; [] without probes."""
    if not data:
        return []
    names = sorted({n for e in data["groups"] for n in e["probes"]}, key=_probe_order)
    lines: list[str] = []
    for name in names:
        heat = f"probe_{name}_heatmap.png"
        if plot_heatmaps(name, data, out_dir / heat, save):
            lines += [f"![{name} by block and step]({heat})", ""]
        curves = f"probe_{name}.png"
        if plot_layers(name, data, out_dir / curves, save):
            lines += [f"![{name} over steps]({curves})", ""]
    if not lines:
        return []
    return [
        "## Training-health probes",
        "",
        "What `callbacks.training_probes` logged every N optimizer steps, per group: the mean "
        "over its finished seeds at each step they all logged (heat maps: block by step, one "
        "colour scale for all groups), and at the first, middle and last block the mean with "
        "a band from the seeds' minimum to their maximum. Values per group, probe, block and "
        "step: `report.json`, under `probes`.",
        "",
        *(f"- `{n}`: {DESCRIPTIONS[n]}" for n in names if n in DESCRIPTIONS),
        "",
        *lines,
    ]
