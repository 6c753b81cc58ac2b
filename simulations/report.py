"""`fedpic report RUN_DIR`: a markdown report of whatever results a run folder holds.

Inputs (docs/evaluation.md, docs/formats.md): results files RUN_DIR/results.json and RUN_DIR/*/results.json, in
which every JSON object with the keys method, shots and per_user is one method's evaluation
(so centralized "fedpic-results" files and federated result files are read alike);
round logs RUN_DIR/rounds.jsonl and RUN_DIR/*/rounds.jsonl (one JSON object per round with
"round"); crop picks RUN_DIR/gallery.json and RUN_DIR/*/gallery.json. Whatever is missing
is left out of the report, never invented.

Output: RUN_DIR/report.md and RUN_DIR/figures/*.png.
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
from matplotlib.ticker import MaxNLocator  # noqa: E402
import numpy as np  # noqa: E402

from pic_core.data.images import load_image  # noqa: E402
from pic_core.protocol import RESULT_KEYS, PopulationResult, gains, paired_gain, restrict  # noqa: E402
from pic_core.visualize import save_rgb  # noqa: E402
from server.round_log import read_rounds  # noqa: E402

from .evaluation import row_label, short_label  # noqa: E402
from .gallery import GALLERY_FILE, draw_sheet, user_families  # noqa: E402
from .paths import resolve_recorded  # noqa: E402

log = logging.getLogger("fedpic.report")

REPORT_FILE = "report.md"
FIGURES = "figures"
ROUNDS_FILE = "rounds.jsonl"
RESULTS_GLOBS = ("results.json", "*/results.json")
TABLE_KEYS = ("acc1_5", "acc_5", "wacc_5", "acc1_10", "acc_10", "srcc")
GAIN_KEY = "acc1_5"
METHOD_ORDER = ("generic", "pre-finetune-du", "pre-finetune", "prior", "federated-generic", "local",
                "centralized-du", "centralized-compact", "centralized", "federated-du", "federated-compact",
                "federated-stored", "federated", "oracle")
PAIRED_BASE = "pre-finetune"
"""The honest baseline: the pre model personalized by the same few-shot path (simulations/evaluation.py)."""


@dataclass
class RunContents:
    """Everything found in a run folder."""

    run_dir: Path
    results: dict[tuple[str, int], PopulationResult] = field(default_factory=dict)
    sources: dict[tuple[str, int], str] = field(default_factory=dict)
    payloads: dict[str, dict] = field(default_factory=dict)  # relative path -> results file content
    rounds: dict[str, list[dict]] = field(default_factory=dict)  # relative path -> round records
    galleries: dict[str, dict] = field(default_factory=dict)  # relative path -> gallery.json content
    notes: list[str] = field(default_factory=list)

    @property
    def methods(self) -> list[str]:
        names = list(dict.fromkeys(m for m, _ in self.results))
        return sorted(names, key=lambda m: (METHOD_ORDER.index(m) if m in METHOD_ORDER else len(METHOD_ORDER), m))

    @property
    def shots(self) -> list[int]:
        return sorted({n for _, n in self.results})

    def get(self, method: str, shots: int) -> Optional[PopulationResult]:
        return self.results.get((method, shots))


def method_label(method: str) -> str:
    return row_label(method)


def curve_users(run: RunContents) -> Optional[list[str]]:
    """The users the accuracy-against-N curve was measured on (a results file's
    evaluated.samples["population-curve"]), or None when no file names one."""
    for payload in run.payloads.values():
        samples = (payload.get("evaluated") or {}).get("samples") or {}
        users = (samples.get("population-curve") or {}).get("users")
        if isinstance(users, list) and users:
            return [str(u) for u in users]
    return None


def curve_result(run: RunContents, method: str, shots: int) -> Optional[PopulationResult]:
    """A method's result at N on the curve sample (all its users when the run names no sample)."""
    result = run.get(method, shots)
    sample = curve_users(run)
    if result is None or sample is None:
        return result
    result = restrict(result, sample)
    return result if result.per_user else None


def sample_note(run: RunContents) -> str:
    """Which users each figure uses, in one sentence."""
    sample = curve_users(run)
    if not sample:
        return "Every N is measured on every user."
    main = sorted({p.get("main_shots") for p in run.payloads.values() if isinstance(p.get("main_shots"), int)})
    everyone = max((len(r.per_user) for r in run.results.values()), default=0)
    return (f"N = {', '.join(map(str, main)) or '?'} is measured on every user ({everyone}); the other N and the "
            f"curves against N on the curve sample of {len(sample)} users ({', '.join(sample[:12])}"
            f"{', ...' if len(sample) > 12 else ''}): the `users` column says which.")


def _population_results(node: Any, where: str) -> Iterator[tuple[str, PopulationResult]]:
    """Every object with method/shots/per_user anywhere in a JSON tree, with its JSON path."""
    if isinstance(node, dict):
        if all(k in node for k in RESULT_KEYS):
            yield where, PopulationResult.from_dict(node, where)
            return
        for key, value in node.items():
            yield from _population_results(value, f"{where}.{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _population_results(value, f"{where}[{index}]")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: not a readable JSON file ({exc})") from None


def _variant(where: str, rel: str, earlier: str, run_dir: Path) -> str:
    """What tells a repeated method entry apart: its top JSON key when the earlier entry
    is in the same file (e.g. a federated run's `holdout_evaluation`), else its folder."""
    if earlier.startswith(rel + "."):
        return where[len(rel) + 1:].split(".")[0].split("[")[0]
    return (run_dir / rel).parent.name


def load_run(run_dir: Path) -> RunContents:
    """Read every results file, round log and gallery in RUN_DIR and one level below."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir}: no such run folder")
    run = RunContents(run_dir)
    for pattern in RESULTS_GLOBS:
        for path in sorted(run_dir.glob(pattern)):
            rel = str(path.relative_to(run_dir))
            payload = _read_json(path)
            run.payloads[rel] = payload if isinstance(payload, dict) else {}
            for where, result in _population_results(payload, rel):
                key = (result.method, result.shots)
                if key in run.results:
                    renamed = f"{result.method} [{_variant(where, rel, run.sources[key], run_dir)}]"
                    run.notes.append(f"`{where}` repeats method {result.method} N={result.shots} of "
                                     f"`{run.sources[key]}`; shown as `{renamed}`")
                    result = PopulationResult(renamed, result.shots, result.per_user)
                    key = (renamed, result.shots)
                run.results[key] = result
                run.sources[key] = where
    for pattern in (ROUNDS_FILE, f"*/{ROUNDS_FILE}"):
        for path in sorted(run_dir.glob(pattern)):
            run.rounds[str(path.relative_to(run_dir))] = read_rounds(path)
    for pattern in (GALLERY_FILE, f"*/{GALLERY_FILE}"):
        for path in sorted(run_dir.glob(pattern)):
            run.galleries[str(path.relative_to(run_dir))] = _read_json(path)
    return run


# ---------------------------------------------------------------- tables

def _fmt(stats: Optional[dict]) -> str:
    if not stats:
        return "-"
    half = stats.get("ci95")
    return f"{stats['mean']:.3f} ± {half:.3f}" if half is not None and math.isfinite(half) else f"{stats['mean']:.3f}"


def results_table(run: RunContents, keys: Sequence[str] = TABLE_KEYS) -> list[str]:
    """Markdown rows: one per method x shots, mean ± 95% CI half-width per metric."""
    lines = ["| method | N | " + " | ".join(keys) + " | users |", "|" + " --- |" * (len(keys) + 3)]
    for n in run.shots:
        for method in run.methods:
            result = run.get(method, n)
            if result is None:
                continue
            summary = result.summary(keys)
            users = max((s["users"] for s in summary.values()), default=0)
            lines.append(f"| {method} | {n} | " + " | ".join(_fmt(summary.get(k)) for k in keys) + f" | {users} |")
    return lines


def gain_base(run: RunContents, shots: int) -> Optional[str]:
    """The method gains are measured against: `generic`, else the first method named *generic."""
    if run.get("generic", shots):
        return "generic"
    return next((m for m in run.methods if m.endswith("generic") and run.get(m, shots)), None)


def gain_table(run: RunContents, key: str = GAIN_KEY, base_method: Optional[str] = None) -> list[str]:
    """Paired per-user gains over `base_method` (default: gain_base, the generic score) at each N."""
    lines = [f"| method | N | base | gain in {key} (paired, ± 95% CI) | users better / same / worse |",
             "| --- | --- | --- | --- | --- |"]
    for n in run.shots:
        base = base_method if base_method is not None else gain_base(run, n)
        if base is None or run.get(base, n) is None:
            continue
        for method in run.methods:
            result = run.get(method, n)
            stats = (paired_gain(result, run.get(base, n), key) if result and method != base
                     and method != "oracle" else None)
            if stats:
                half = f"{stats['ci95']:.3f}" if math.isfinite(stats["ci95"]) else "n/a"
                lines.append(f"| {method} | {n} | {base} | {stats['mean']:+.3f} ± {half} | "
                             f"{stats['better']} / {stats['same']} / {stats['worse']} |")
    return lines if len(lines) > 2 else []


def family_table(run: RunContents, families: dict[str, str], shots: int, key: str = GAIN_KEY) -> list[str]:
    """Mean `key` per taste family and method at one N (users of a family are few: no CI)."""
    names = sorted(set(families.values()))
    methods = [m for m in run.methods if run.get(m, shots)]
    if not names or not methods:
        return []
    lines = ["| family | " + " | ".join(methods) + " |", "|" + " --- |" * (len(methods) + 1)]
    for family in names:
        cells = []
        for method in methods:
            values = [m[key] for u, m in run.get(method, shots).per_user.items()
                      if families.get(u) == family and math.isfinite(m.get(key, math.nan))]
            cells.append(f"{np.mean(values):.3f}" if values else "-")
        lines.append(f"| {family} | " + " | ".join(cells) + " |")
    return lines


def population_section(population: Optional[dict]) -> list[str]:
    if not population:
        return []
    lines = ["## Population", ""]
    counts = population.get("counts", {})
    lines.append(f"{population.get('users', '?')} users, images per user: "
                 + ", ".join(f"{k} {v}" for k, v in counts.items())
                 + (", one shared image pool" if population.get("shared_images") else ", each user's own photos")
                 + f"; seed {population.get('seed', '?')}.")
    if population.get("families"):
        lines += ["", "Families: " + ", ".join(f"{k} ({v})" for k, v in population["families"].items()) + "."]
    stats = {k: v for k, v in (population.get("stats") or {}).items() if isinstance(v, (int, float))}
    if stats:
        lines += ["", "| statistic | value |", "| --- | --- |"]
        lines += [f"| {k} | {v:.3f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in stats.items()]
    return lines + [""]


def privacy_section(run: RunContents) -> list[str]:
    """ε of every DP run found (results.json "privacy", written by simulations/federated.py)."""
    rows = [(rel, p["privacy"]) for rel, p in run.payloads.items() if isinstance(p.get("privacy"), dict)]
    if not rows:
        return []
    header = "| results | ε | δ | noise multiplier | q = sampled/devices | rounds | clipping norm |"
    lines = ["## Privacy (DP-FedAvg)", "", header, "| --- | --- | --- | --- | --- | --- | --- |"]
    for rel, p in rows:
        lines.append(f"| `{rel}` | {p['epsilon']:.2f} | {p['delta']:.3g} | {p['noise_multiplier']:g} | "
                     f"{p['sampling_rate']:.3f} | {p['rounds']} | {p['clipping_norm']:g} |")
    accountant = rows[0][1].get("accountant", "?")
    return lines + ["", f"User-level (ε, δ) from {accountant} sampling at rate q (docs/privacy.md).", ""]


# ---------------------------------------------------------------- plots

def plot_gain_histograms(run: RunContents, path: Path, key: str = GAIN_KEY) -> Optional[Path]:
    """Per-user gain over the base method, one panel per N, one colour per personalized method."""
    panels = []
    for n in run.shots:
        base = gain_base(run, n)
        if base is None:
            continue
        series = {m: list(gains(run.get(m, n), run.get(base, n), key).values()) for m in run.methods
                  if m not in (base, "oracle") and not m.endswith("generic") and m != "prior" and run.get(m, n)}
        series = {m: v for m, v in series.items() if v}
        if series:
            panels.append((n, base, series))
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    bins = np.linspace(-1.05, 1.05, 22)  # centred on multiples of 0.1: ties (gain 0) get their own bar
    for ax, (n, base, series) in zip(axes[0], panels):
        ax.hist(list(series.values()), bins=bins, label=list(series), alpha=0.85)
        ax.axvline(0.0, color="black", linewidth=0.8)
        ax.set_title(f"N = {n}: per-user gain over {base}")
        ax.set_xlabel(f"{key} (method - {base})")
        ax.set_ylabel("users")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=8)
    return _save(fig, path)


def plot_accuracy_vs_shots(run: RunContents, path: Path, key: str = GAIN_KEY) -> Optional[Path]:
    """Mean `key` with 95% CI error bars against N, one line per method, every point on the curve sample."""
    fig, ax = plt.subplots(figsize=(7.5, 4.6))
    drawn = 0
    for method in run.methods:
        points = [(n, curve_result(run, method, n)) for n in run.shots]
        points = [(n, r.summary((key,)).get(key)) for n, r in points if r is not None]
        points = [(n, s) for n, s in points if s]
        if not points:
            continue
        xs = [n for n, _ in points]
        ax.errorbar(xs, [s["mean"] for _, s in points],
                    yerr=[s["ci95"] if math.isfinite(s["ci95"]) else 0.0 for _, s in points],
                    marker="o", capsize=3, label=short_label(method),
                    linestyle="--" if method == "oracle" or len(xs) == 1 else "-")
        drawn += 1
    if not drawn:
        plt.close(fig)
        return None
    sample = curve_users(run)
    ax.set_xticks(run.shots)
    ax.set_xlabel("N (few-shot images per user)")
    ax.set_ylabel(f"{key} on unseen test photos (mean, 95% CI)")
    ax.set_title(f"accuracy against N ({len(sample)} curve users)" if sample else "accuracy against N (all users)",
                 fontsize=10)
    ax.set_ylim(0, 1.05)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return _save(fig, path)


def plot_gain_vs_shots(run: RunContents, path: Path, base: str = PAIRED_BASE, key: str = GAIN_KEY) -> Optional[Path]:
    """Paired per-user gain over `base` against N (mean, 95% CI), one line per method, curve sample."""
    fig, ax = plt.subplots(figsize=(7.5, 4.6))
    drawn = 0
    for method in run.methods:
        if method in (base, "oracle"):
            continue
        points = []
        for n in run.shots:
            better, worse = curve_result(run, method, n), curve_result(run, base, n)
            stats = paired_gain(better, worse, key) if better is not None and worse is not None else None
            if stats:
                points.append((n, stats))
        if not points:
            continue
        ax.errorbar([n for n, _ in points], [s["mean"] for _, s in points],
                    yerr=[s["ci95"] if math.isfinite(s["ci95"]) else 0.0 for _, s in points],
                    marker="o", capsize=3, label=short_label(method))
        drawn += 1
    if not drawn:
        plt.close(fig)
        return None
    sample = curve_users(run)
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_xticks(run.shots)
    ax.set_xlabel("N (few-shot images per user)")
    ax.set_ylabel(f"{key} gain over {short_label(base)} (paired, 95% CI)")
    ax.set_title(f"gain over {short_label(base)} ({len(sample)} curve users)" if sample
                 else f"gain over {short_label(base)} (all users)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return _save(fig, path)


def flatten_numbers(record: dict, prefix: str = "") -> dict[str, float]:
    """Finite numbers of a nested record under dotted keys (booleans and nulls left out)."""
    out: dict[str, float] = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten_numbers(value, f"{name}."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[name] = float(value)
    return out


CURVE_METRICS = ("acc1_5", "srcc", "acc_5", "wacc_5", "acc1_10", "acc_10", "pcc")
"""Evaluation metrics that get a learning-curve panel, in panel order."""


def curve_groups(records: Sequence[dict], max_panels: int = 3) -> dict[str, dict[str, list[tuple[float, float]]]]:
    """{"training loss": {key: [(round, value)]}, "<metric>": {key: [...]}} from round records.

    Losses share one panel; each evaluation metric gets its own panel whose lines are its
    variants (`evaluate.generic-acc1_5`, `evaluate.personalized-acc1_5`...), so the federated
    log's generic / personalized / stored figures are compared per metric. Keys are dotted
    paths of nested objects; the metric is the last part after a '-' (or the whole leaf).
    """
    losses: dict[str, list[tuple[float, float]]] = {}
    metrics: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for record in records:
        for key, value in flatten_numbers(record).items():
            leaf = key.rsplit(".", 1)[-1]
            if key == "round":
                continue
            if "loss" in leaf:
                losses.setdefault(key, []).append((record["round"], value))
            elif leaf.rsplit("-", 1)[-1] in CURVE_METRICS:
                metrics.setdefault(leaf.rsplit("-", 1)[-1], {}).setdefault(key, []).append((record["round"], value))
    groups = {"training loss": losses} if losses else {}
    for name in [m for m in CURVE_METRICS if m in metrics][:max_panels]:
        groups[name] = metrics[name]
    return groups


CURVE_LABELS = {"generic": "federated prior (d_u = 0)",
                "personalized": "N-shot personalized (fitted at each evaluation)",
                "stored": "stored device state (personal.pt)",
                "loss-shared": "shared part (device mean)", "loss-personal": "personal part (device mean)"}
"""Readable names of round-log series (the last dotted part, before '-<metric>' for metrics)."""


def curve_label(key: str, metric: str) -> str:
    leaf = key.rsplit(".", 1)[-1]
    variant = leaf[: -len(metric) - 1] if metric != "training loss" and leaf.endswith("-" + metric) else leaf
    return CURVE_LABELS.get(variant, variant or leaf)


def eval_sample_text(records: Sequence[dict]) -> str:
    """The devices behind the evaluation points, e.g. '10 devices per evaluation round'."""
    counts = sorted({int(r["eval_devices"]) for r in records if r.get("evaluate") and r.get("eval_devices")})
    if not counts:
        return "evaluation devices not recorded"
    span = str(counts[0]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
    return f"{span} devices per evaluation round, drawn afresh each round"


def plot_learning_curves(records: Sequence[dict], path: Path, title: str, max_lines: int = 8) -> Optional[Path]:
    groups = curve_groups(records)
    if not groups:
        return None
    sample = eval_sample_text(records)
    fig, axes = plt.subplots(1, len(groups), figsize=(5.2 * len(groups), 4.4), squeeze=False)
    for ax, (name, series) in zip(axes[0], groups.items()):
        for key in sorted(series)[:max_lines]:
            points = sorted(series[key])
            ax.plot([p[0] for p in points], [p[1] for p in points], marker=".", label=curve_label(key, name))
        if name == "training loss":
            ax.set_title(f"{title}\ntraining loss (sampled devices)", fontsize=9)
            ax.set_ylabel("loss (mean over the round's devices)")
        else:
            ax.set_title(f"{title}\n{name} on test photos ({sample})", fontsize=9)
            ax.set_ylabel(f"{name} (device-weighted mean)")
        ax.set_xlabel("federated round")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _save(fig, path)


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ---------------------------------------------------------------- the report

def _data_dir(run: RunContents) -> Optional[Path]:
    """The dataset folder a results or gallery file records (relative to that file's folder)."""
    for rel, payload in list(run.payloads.items()) + list(run.galleries.items()):
        folder = resolve_recorded(payload, "data", run.run_dir / rel) if isinstance(payload, dict) else None
        if folder is not None and folder.is_dir():
            return folder
    return None


def _population(run: RunContents, data_dir: Optional[Path]) -> Optional[dict]:
    for payload in run.payloads.values():
        if isinstance(payload.get("population"), dict):
            return payload["population"]
    if data_dir and (data_dir / "population.json").is_file():
        return _read_json(data_dir / "population.json")
    return None


def write_galleries(run: RunContents, figures: Path, data_dir: Optional[Path]) -> list[tuple[str, Path]]:
    """One PNG per gallery sheet; sheets whose photo cannot be found are noted and skipped."""
    written = []
    for rel, gallery in run.galleries.items():
        root = (resolve_recorded(gallery, "data", run.run_dir / rel) if isinstance(gallery, dict) else None) or data_dir
        prefix = "" if "/" not in rel else rel.split("/")[0] + "_"
        for sheet in gallery.get("sheets", []):
            photo = (root / "images" / sheet["image"]) if root else None
            if photo is None or not photo.is_file():
                run.notes.append(f"gallery `{sheet.get('name')}` skipped: photo {sheet.get('image')} not found")
                continue
            image = draw_sheet(sheet, load_image(photo), gallery.get("families", {}))
            path = save_rgb(figures / f"{prefix}{sheet['name']}.png", image)
            written.append(((f"{sheet.get('title', sheet['name'])} ({gallery.get('method', '?')}, "
                             f"N = {gallery.get('shots', '?')}, photo {sheet['image']})"), path))
    return written


def targets_section(run: RunContents) -> list[str]:
    lines = []
    for rel, payload in run.payloads.items():
        targets = payload.get("targets")
        if isinstance(targets, dict) and targets:
            lines += [f"Targets recorded in `{rel}`:", "", "| target | value | met |", "| --- | --- | --- |"]
            for name, target in targets.items():
                if isinstance(target, dict):
                    value = target.get("value")
                    shown = (str(value) if isinstance(value, int) else f"{value:+.3f}" if isinstance(value, float)
                             else "-")
                    if isinstance(value, float) and isinstance(target.get("ci95"), float):
                        shown += f" ± {target['ci95']:.3f}"
                    lines.append(f"| {name}: {target.get('description', '')} | {shown} | "
                                 f"{'yes' if target.get('met') else 'no'} |")
            lines.append("")
    return lines


def build_report(run_dir: Path) -> Path:
    """Write RUN_DIR/report.md and RUN_DIR/figures/; returns the markdown path."""
    run = load_run(Path(run_dir))
    if not run.results and not run.rounds and not run.galleries:
        raise FileNotFoundError(f"{run_dir}: no results.json, rounds.jsonl or gallery.json here or one level below")
    figures = run.run_dir / FIGURES
    data_dir = _data_dir(run)
    lines = [f"# fedpic report: {run.run_dir.name}", ""]
    lines += ["Protocol: each user is personalized from the first N images of their `train` split and scored on "
              "their unseen `test` split; figures are the mean over users with the half-width of the 95% t "
              "confidence interval. Sources: " + (", ".join(f"`{p}`" for p in run.payloads) or "none") + ".", ""]
    lines += population_section(_population(run, data_dir))
    if run.results:
        lines += ["## Results", "", "Methods: " + "; ".join(f"`{m}` {method_label(m)}" for m in run.methods) + ".", ""]
        lines += [sample_note(run), ""]
        lines += results_table(run) + [""]
        paired = gain_table(run, base_method=PAIRED_BASE)
        if paired:
            lines += [f"### Gain over {PAIRED_BASE} (the pre model personalized by the same few-shot path)", "",
                      ("Paired per user at the same N on the users both rows scored; a CI above 0 means the "
                      "prior (and its federation) adds to what a device does alone."), ""] + paired + [""]
        gain_lines = gain_table(run)
        if gain_lines:
            lines += ["### Gain over generic", ""] + gain_lines + [""]
        families = user_families(data_dir) if data_dir else {}
        if families:
            n = 5 if 5 in run.shots else run.shots[0]
            lines += [f"### {GAIN_KEY} by taste family (N = {n})", ""] + family_table(run, families, n) + [""]
        lines += targets_section(run)
        sample = curve_users(run)
        where = f" (the {len(sample)} curve users)" if sample else ""
        for title, path in ((f"Accuracy against N{where}", plot_accuracy_vs_shots(run, figures / "accuracy_vs_shots.png")),
                            (f"Gain over {PAIRED_BASE} against N{where}",
                             plot_gain_vs_shots(run, figures / "gain_vs_shots.png")),
                            ("Per-user gain", plot_gain_histograms(run, figures / "gain_histogram.png"))):
            if path:
                lines += [f"### {title}", "", f"![{title}]({path.relative_to(run.run_dir)})", ""]
    lines += privacy_section(run)
    for rel, records in run.rounds.items():
        name = rel.replace("/", "_").removesuffix(".jsonl")
        path = plot_learning_curves(records, figures / f"learning_curves_{name}.png", rel)
        if path:
            lines += [f"## Learning curves (`{rel}`, {len(records)} rounds)", "",
                      (f"Evaluation points: {eval_sample_text(records)} (federation.eval_fraction / eval_devices), "
                      "so points of different rounds come from different devices; the population figures above "
                      "use every device."), "", f"![learning curves]({path.relative_to(run.run_dir)})", ""]
    sheets = write_galleries(run, figures, data_dir)
    if sheets:
        lines += ["## Crop galleries", "", ("Each tile is the same photo: the generic model's best crop (yellow), "
                  "or one user's personalized best crop (red, `model`) with the user's own best crop "
                  "(white, `own`) when it is known."), ""]
        for title, path in sheets:
            lines += [f"**{title}**", "", f"![{title}]({path.relative_to(run.run_dir)})", ""]
    if run.notes:
        lines += ["## Notes", ""] + [f"- {note}" for note in run.notes] + [""]
    out = run.run_dir / REPORT_FILE
    out.write_text("\n".join(lines).rstrip() + "\n")
    return out
