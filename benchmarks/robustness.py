"""Byzantine robustness: the final test accuracy of every aggregation strategy under every attack.

Usage::

    pip install -e .[bench]      # matplotlib, for the two figures
    python benchmarks/robustness.py --setting quick --out benchmarks/results/quick
    python benchmarks/robustness.py --setting quick --out /tmp/r --strategies median,krum --attacks none,alie --rounds 10
    python benchmarks/robustness.py --setting full --out benchmarks/results/full \\
        --strategies krum,krum+bucketing --attacks alie --rounds 100

Each cell of the matrix (attack x strategy) is one in-process call of
``torchchain.experiment.run`` on a config composed with Hydra's Compose API from the repo's
``conf/``, exactly what ``python train.py <overrides>`` would run. A strategy name may carry
pre-aggregation steps after ``+``: ``krum+bucketing`` is ``strategy=krum strategy.pre=[bucketing]``,
and arguments after ``:``: ``centered_clipping:tau=auto+bucketing``. Under the table, the row
``worst case`` gives each strategy's lowest accuracy over every attack but ``none`` (as ByzFL's
benchmark reports it), with the attack that reached it.

Settings:
    quick: the bundled digits data, 10 clients of which 2 are malicious, iid partition, 30
        rounds. Minutes on two CPU cores.
    quick-noniid: the same with label-sorted shards (2 per client), where rules that assume
        similar honest updates fall apart; its default columns are the rules that separate.
    full: MNIST from ``../shared/data`` (no download), 25 clients of which 5 are malicious,
        label-sorted shards (2 per client), the default CNN, and the distributed-SGD setting of
        Karimireddy, He and Jaggi (2022), "Byzantine-Robust Learning on Heterogeneous Datasets
        via Bucketing": one local step of batch 32, momentum 0.9, lr 0.01, 600 rounds, evaluated
        every 20. Its default matrix is every strategy with and without bucketing (s=2); on a CPU
        a cell takes hours, so pick cells with --strategies and --attacks.

Written into --out: ``robustness.md`` (the table: rows are attacks, columns strategies, cells
the final test accuracy, averaged over seeds), ``robustness.csv`` (one row per run),
``heatmap.png``, and ``curves.png`` / ``curves.csv``: test error against rounds for 0, 1, 2, ...
malicious clients, for one attack and a few strategies. A pair whose requirement fails (Bulyan
needs n >= 4f+3) shows ``n/a (needs ...)``; an attack or strategy whose class does not exist
yet shows ``pending``.

Runs live under --runs (default ``outputs/robustness/<setting>``). A run that finished with the
same overrides is read back instead of repeated, so calling the script again fills in only the
missing cells; --rerun ignores earlier runs. Ledgers and checkpoints are deleted once a run is
summarised (--keep-ledgers keeps them): the benchmark needs only ``summary.json`` and the
TensorBoard events, and a full-setting ledger grows by about 40 MB a round.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import importlib
import io
import json
import math
import re
import shutil
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from torchchain.errors import ConfigError
from torchchain.experiment import run

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"

# Table order: the non-robust baseline first, then the rules roughly by family; options added to
# conf/ later are appended in name order.
STRATEGY_ORDER = (
    "fedavg", "median", "trimmed_mean", "lnearest", "krum", "multikrum", "bulyan", "geomed",
    "centered_clipping", "fltrust",
)
ATTACK_ORDER = (
    "none", "signflip", "gaussian", "labelflip", "alie", "ipm", "minmax", "minsum", "mimic",
    "rop", "optimal_alie", "optimal_ipm", "backdoor", "replay", "sybil", "malformed",
)
#: The row under the table: each strategy's lowest accuracy over every attack but ``none``
#: (the worst case, as ByzFL's benchmark reports it).
WORST_CASE = "worst case"


@dataclass(frozen=True)
class Setting:
    """What a benchmark setting fixes.

    Attributes:
        overrides: Hydra overrides shared by every run.
        byzantine: Malicious clients in the matrix runs.
        strategies: The matrix columns when --strategies is not given (``None``: every option).
        curve_attack: The attack of the curves figure.
        curve_strategies: One panel of the curves figure each.
        curve_byzantine: One curve per malicious-client count.
    """

    overrides: tuple[str, ...]
    byzantine: int
    strategies: tuple[str, ...] | None
    curve_attack: str
    curve_strategies: tuple[str, ...]
    curve_byzantine: tuple[int, ...]


def _settings() -> dict[str, Setting]:
    every = _options("strategy", STRATEGY_ORDER)
    return {
        "quick": Setting(
            overrides=("dataset=digits", "clients=10", "partition.kind=iid"),
            byzantine=2,
            strategies=None,
            curve_attack="gaussian",
            curve_strategies=("fedavg", "median", "krum", "centered_clipping"),
            curve_byzantine=(0, 1, 2, 3, 4),
        ),
        "quick-noniid": Setting(
            overrides=(
                "dataset=digits", "clients=10", "partition.kind=shards", "partition.shards_per_client=2",
            ),
            byzantine=2,
            strategies=(
                "fedavg", "median", "trimmed_mean", "krum", "geomed", "median+bucketing",
                "centered_clipping:tau=auto", "centered_clipping:tau=auto+bucketing",
                "centered_clipping:tau=0.5+bucketing",
            ),
            curve_attack="alie",
            curve_strategies=("median", "centered_clipping:tau=auto+bucketing"),
            curve_byzantine=(0, 1, 2, 3),
        ),
        "full": Setting(
            overrides=(
                "dataset=mnist",
                f"dataset.root={ROOT.parent / 'shared' / 'data'}",
                "dataset.download=false",
                "clients=25",
                "partition.kind=shards",
                "partition.shards_per_client=2",
                "model=cnn",
                "local_steps=1",
                "batch_size=32",
                "momentum=0.9",
                "lr=0.01",
                "rounds=600",
                "runtime.eval_every=20",
                # The cell is summarised and its ledger deleted; keeping every update would
                # write about 25 GB per 600-round cell.
                "chain.keep_updates=2",
            ),
            byzantine=5,
            strategies=(*every, *(f"{name}+bucketing" for name in every)),
            curve_attack="alie",
            curve_strategies=("median", "median+bucketing"),
            curve_byzantine=(0, 1, 3, 5),
        ),
    }


# -- one run ------------------------------------------------------------------------------------


@dataclass
class Result:
    """One run, or why it did not run.

    ``status`` is ``ok``, ``n/a`` (a requirement of the strategy or attack fails for these
    counts), ``pending`` (its class does not exist yet) or ``error``.
    """

    attack: str
    strategy: str
    byzantine: int
    seed: int
    status: str
    accuracy: float | None = None
    backdoor_accuracy: float | None = None
    rejected: int | None = None
    wall_seconds: float | None = None
    round_seconds: float | None = None
    note: str = ""
    curve: list[tuple[int, float]] = field(default_factory=list)


def strategy_overrides(spec: str) -> list[str]:
    """A column name as Hydra overrides: ``NAME[:KEY=VALUE...][+STEP...]``.

    ``"krum+bucketing"`` -> ``["strategy=krum", "strategy.pre=[bucketing]"]``;
    ``"centered_clipping:tau=auto+bucketing"`` -> ``["strategy=centered_clipping",
    "strategy.tau=auto", "strategy.pre=[bucketing]"]``.
    """
    rule, *pre = spec.split("+")
    name, *arguments = rule.split(":")
    return [
        f"strategy={name}",
        *(f"strategy.{argument}" for argument in arguments),
        *([f"strategy.pre=[{','.join(pre)}]"] if pre else []),
    ]


def compose_config(overrides: Sequence[str]) -> DictConfig:
    """The config ``python train.py <overrides>`` would run."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def _missing_target(cfg: DictConfig) -> str | None:
    """The ``_target_`` of the strategy or attack that cannot be imported yet, if any."""
    for node in (cfg.strategy, cfg.attack):
        module, _, name = str(node._target_).rpartition(".")
        try:
            getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            return str(node._target_)
    return None


def _requirement(message: str) -> str | None:
    """``"bulyan needs n >= 4f+3 clients, got ..."`` -> ``"needs n >= 4f+3"``; ``None`` if no requirement.

    When pre-aggregation steps shrank the rows, says how many were left.
    """
    found = re.search(r"\bneeds (.+?)(?: clients)?, got\b", message)
    if not found:
        return None
    rows = re.search(r"steps \[(.+?)\] turn \d+ clients into (\d+) rows", message)
    return f"needs {found.group(1)}" + (f"; {rows.group(1)} leaves {rows.group(2)} rows" if rows else "")


def _eval_curve(tensorboard: Path, tag: str, eval_every: int, rounds: int) -> list[tuple[int, float]]:
    """``(round, value)`` at the rounds that evaluated; the runtime repeats the last value in between."""
    events = EventAccumulator(str(tensorboard), size_guidance={"scalars": 0})
    events.Reload()
    if tag not in events.Tags()["scalars"]:
        return []
    return [(e.step, e.value) for e in events.Scalars(tag) if e.step % eval_every == 0 or e.step == rounds]


def run_cell(
    overrides: list[str], run_dir: Path, *, attack: str, strategy: str, byzantine: int, seed: int,
    rerun: bool, keep_ledger: bool,
) -> Result:
    """Run (or read back) one configuration; never raises for a configuration that cannot run."""
    result = Result(attack=attack, strategy=strategy, byzantine=byzantine, seed=seed, status="ok")
    cfg = compose_config(overrides)
    missing = _missing_target(cfg)
    if missing is not None:
        result.status, result.note = "pending", f"{missing} is not implemented yet"
        return result

    summary_path = run_dir / "summary.json"
    # The folder is named by the overrides; a run made when conf/ said otherwise (a changed
    # default, say) saved another config and is outdated.
    saved = run_dir / "config.yaml"
    outdated = not saved.exists() or OmegaConf.to_container(OmegaConf.load(saved)) != OmegaConf.to_container(cfg)
    if rerun or outdated or not summary_path.exists():
        if run_dir.exists():  # an unfinished or outdated run: start afresh
            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True)
        (run_dir / "overrides.txt").write_text("\n".join(overrides) + "\n")
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # run() prints a summary per run
                run(cfg, run_dir)
        except ConfigError as error:
            requirement = _requirement(str(error))
            result.status = "n/a" if requirement else "error"
            result.note = requirement or str(error)
            shutil.rmtree(run_dir)
            return result
        except Exception as error:  # one broken cell must not cost the rest of a long matrix
            result.status, result.note = "error", f"{type(error).__name__}: {error}"
            shutil.rmtree(run_dir)
            return result
        if not keep_ledger:
            for bulky in ("ledger", "checkpoints"):
                shutil.rmtree(run_dir / bulky, ignore_errors=True)

    summary = json.loads(summary_path.read_text())
    result.accuracy = summary.get("final_accuracy")
    result.rejected = summary.get("rejected")
    result.wall_seconds = summary.get("wall_seconds")
    result.round_seconds = summary.get("median_round_seconds")
    eval_every, rounds = int(cfg.runtime.eval_every), int(cfg.rounds)
    result.curve = _eval_curve(run_dir / "tensorboard", "eval/accuracy", eval_every, rounds)
    backdoor = _eval_curve(run_dir / "tensorboard", "eval/backdoor_accuracy", eval_every, rounds)
    if backdoor:
        result.backdoor_accuracy = backdoor[-1][1]
    return result


class Runner:
    """Runs cells of one setting, keeping each run in its own folder under ``runs``."""

    def __init__(self, setting: Setting, runs: Path, *, rounds: int | None, rerun: bool, keep_ledgers: bool) -> None:
        self.setting = setting
        self.runs = runs
        self.rounds = rounds
        self.rerun = rerun
        self.keep_ledgers = keep_ledgers

    def overrides(self, attack: str, strategy: str, byzantine: int, seed: int) -> list[str]:
        return [
            *self.setting.overrides,
            *(([f"rounds={self.rounds}"]) if self.rounds is not None else []),
            f"byzantine={byzantine}",
            f"seed={seed}",
            *strategy_overrides(strategy),
            f"attack={attack}",
            "runtime.progress=false",
        ]

    def __call__(self, attack: str, strategy: str, byzantine: int, seed: int) -> Result:
        overrides = self.overrides(attack, strategy, byzantine, seed)
        # The folder is named by the overrides, so equal overrides find the earlier run.
        digest = hashlib.sha256("\n".join(overrides).encode()).hexdigest()[:10]
        run_dir = self.runs / f"{attack}__{strategy}__byz{byzantine}__seed{seed}__{digest}"
        return run_cell(
            overrides, run_dir, attack=attack, strategy=strategy, byzantine=byzantine, seed=seed,
            rerun=self.rerun, keep_ledger=self.keep_ledgers,
        )


# -- tables and figures -------------------------------------------------------------------------


def cell_text(results: Sequence[Result]) -> str:
    """One table cell from the runs of every seed: mean accuracy (± std over seeds), or the status."""
    done = [r.accuracy for r in results if r.status == "ok" and r.accuracy is not None]
    if len(done) == len(results) and done:
        mean = statistics.fmean(done)
        return f"{mean:.3f}" if len(done) == 1 else f"{mean:.3f} ± {statistics.stdev(done):.3f}"
    first = next(r for r in results if r.status != "ok")
    if first.status == "n/a":
        return f"n/a ({first.note})"
    return first.status


def _mean(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.fmean(present) if present and len(present) == len(values) else None


def _unique(results: Sequence[Result]) -> list[Result]:
    """Each run once: a curve run may also be a matrix cell."""
    seen: dict[tuple[str, str, int, int], Result] = {}
    for r in results:
        seen.setdefault((r.attack, r.strategy, r.byzantine, r.seed), r)
    return list(seen.values())


def markdown_table(rows: Sequence[str], columns: Sequence[str], cells: dict[tuple[str, str], str]) -> str:
    lines = ["| attack | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    lines += [f"| {row} | " + " | ".join(cells[row, col] for col in columns) + " |" for row in rows]
    return "\n".join(lines)


def write_outputs(
    out: Path, *, setting_name: str, setting: Setting, command: str, attacks: Sequence[str],
    strategies: Sequence[str], matrix: dict[tuple[str, str], list[Result]], curves: list[Result], wall: float,
    rounds: int | None,
) -> str:
    """Write robustness.md, robustness.csv, curves.csv and the figures; return the markdown table."""
    out.mkdir(parents=True, exist_ok=True)
    shared = [*setting.overrides, *([f"rounds={rounds}"] if rounds is not None else []), f"byzantine={setting.byzantine}"]
    cells = {key: cell_text(results) for key, results in matrix.items()}
    attacked = [a for a in attacks if a != "none"]
    if attacked:
        for strategy in strategies:
            means = [_mean([r.accuracy for r in matrix[a, strategy]]) for a in attacked]
            known = [(m, a) for m, a in zip(means, attacked) if m is not None]
            cells[WORST_CASE, strategy] = f"**{min(known)[0]:.3f}** ({min(known)[1]})" if known else "-"
    table = markdown_table([*attacks, *([WORST_CASE] if attacked else [])], strategies, cells)
    round_costs = [r.round_seconds for rs in matrix.values() for r in rs if r.round_seconds is not None]
    run_seconds = [r.wall_seconds for r in _unique([*(r for rs in matrix.values() for r in rs), *curves])
                   if r.wall_seconds is not None]
    lines = [
        f"# Robustness: {setting_name} setting",
        "",
        f"Command: `{command}`",
        "",
        # The data root is shown relative to the repo, so the record reads the same on every machine.
        f"Shared overrides: `{' '.join(shared).replace(str(ROOT.parent), '<repo>/..')}`. "
        f"Cells: final test accuracy{' (mean ± std over seeds)' if any(len(v) > 1 for v in matrix.values()) else ''}. "
        f"Compute: {sum(run_seconds) / 60:.1f} min over {len(run_seconds)} runs (this call took {wall / 60:.1f} min; "
        f"runs finished by an earlier call are read back)"
        + (f"; median round {statistics.median(round_costs):.3f} s." if round_costs else "."),
        "",
        table,
    ]
    backdoor = {k: _mean([r.backdoor_accuracy for r in v]) for k, v in matrix.items() if k[0] == "backdoor"}
    if any(v is not None for v in backdoor.values()):
        lines += [
            "",
            "Backdoor success rate (share of triggered test images of another class classified as the target):",
            "",
            markdown_table(["backdoor"], strategies, {k: "-" if v is None else f"{v:.3f}" for k, v in backdoor.items()}),
        ]
    chain = [a for a in attacks if a in ("replay", "sybil")]
    if chain:
        rejected = {
            (a, s): "-" if (m := _mean([r.rejected for r in matrix[a, s]])) is None else f"{m:.0f}"
            for a in chain for s in strategies
        }
        lines += ["", "Updates the miner rejected over the whole run:", "", markdown_table(chain, strategies, rejected)]
    (out / "robustness.md").write_text("\n".join(lines) + "\n")

    fields = ["setting", "attack", "strategy", "byzantine", "seed", "status", "accuracy", "backdoor_accuracy",
              "rejected", "wall_seconds", "round_seconds", "note"]
    with open(out / "robustness.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(fields)
        for results in matrix.values():
            for r in results:
                writer.writerow([setting_name, r.attack, r.strategy, r.byzantine, r.seed, r.status, r.accuracy,
                                 r.backdoor_accuracy, r.rejected, r.wall_seconds, r.round_seconds, r.note])
    if curves:
        with open(out / "curves.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["setting", "attack", "strategy", "byzantine", "seed", "status", "round", "accuracy"])
            for r in curves:
                for step, value in r.curve or [(None, None)]:
                    writer.writerow([setting_name, r.attack, r.strategy, r.byzantine, r.seed, r.status, step, value])

    try:
        import matplotlib
    except ImportError:
        print("matplotlib is not installed (pip install -e .[bench]): no heatmap.png or curves.png", file=sys.stderr)
        return table
    matplotlib.use("Agg")
    plot_heatmap(out / "heatmap.png", attacks, strategies, matrix, cells, title=f"{setting_name} setting")
    plot_curves(out / "curves.png", curves, setting)
    return table


def plot_heatmap(
    path: Path, attacks: Sequence[str], strategies: Sequence[str], matrix: dict[tuple[str, str], list[Result]],
    cells: dict[tuple[str, str], str], *, title: str,
) -> None:
    import matplotlib.pyplot as plt
    import numpy as np

    values = np.full((len(attacks), len(strategies)), np.nan)
    for i, attack in enumerate(attacks):
        for j, strategy in enumerate(strategies):
            mean = _mean([r.accuracy for r in matrix[attack, strategy]])
            if mean is not None:
                values[i, j] = mean
    cmap = plt.get_cmap("RdYlGn").copy()
    cmap.set_bad("lightgrey")
    fig, ax = plt.subplots(figsize=(1.0 + 0.85 * len(strategies), 1.0 + 0.42 * len(attacks)))
    image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, vmin=0.0, vmax=1.0, aspect="auto")
    for i, attack in enumerate(attacks):
        for j, strategy in enumerate(strategies):
            text = f"{values[i, j]:.2f}" if not math.isnan(values[i, j]) else cells[attack, strategy].split(" ")[0]
            ax.text(j, i, text, ha="center", va="center", fontsize=7)
    ax.set_xticks(range(len(strategies)), strategies, rotation=40, ha="right", fontsize=8)
    ax.set_yticks(range(len(attacks)), attacks, fontsize=8)
    ax.set_title(f"Final test accuracy, {title}", fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.03)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_curves(path: Path, curves: Sequence[Result], setting: Setting) -> None:
    import matplotlib.pyplot as plt

    strategies = list(dict.fromkeys(r.strategy for r in curves))
    if not strategies:
        return
    fig, axes = plt.subplots(1, len(strategies), figsize=(3.2 * len(strategies), 2.8), sharey=True, squeeze=False)
    for ax, strategy in zip(axes[0], strategies):
        for byzantine in sorted({r.byzantine for r in curves if r.strategy == strategy}):
            runs = [r for r in curves if r.strategy == strategy and r.byzantine == byzantine and r.curve]
            if not runs:
                continue
            rounds = [step for step, _ in runs[0].curve]
            error = [1.0 - statistics.fmean(r.curve[k][1] for r in runs) for k in range(len(rounds))]
            ax.plot(rounds, error, label=f"{byzantine} malicious")
        ax.set_title(strategy, fontsize=9)
        ax.set_xlabel("round", fontsize=8)
        ax.set_ylim(0.0, 1.0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("test error (1 - accuracy)", fontsize=8)
    fig.suptitle(f"attack={setting.curve_attack}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


# -- command line -------------------------------------------------------------------------------


def _options(group: str, order: Sequence[str]) -> list[str]:
    # strategy=default is geomed at its defaults: one column is enough.
    present = {p.stem for p in (CONF / group).glob("*.yaml")} - {"default"}
    return [name for name in order if name in present] + sorted(present - set(order))


def _names(text: str | None) -> list[str] | None:
    return None if text is None else [name for name in text.split(",") if name]


def main(argv: Sequence[str] | None = None) -> int:
    settings = _settings()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--setting", choices=sorted(settings), default="quick")
    parser.add_argument("--out", type=Path, required=True, help="folder for robustness.md/.csv and the figures")
    parser.add_argument("--strategies", help="comma-separated; NAME+STEP adds a pre-aggregation step (default: the setting's)")
    parser.add_argument("--attacks", help="comma-separated (default: every conf/attack option)")
    parser.add_argument("--rounds", type=int, help="override the setting's rounds")
    parser.add_argument("--byzantine", type=int, help="malicious clients in the matrix runs (default: the setting's)")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds; cells average over them")
    parser.add_argument("--curve-attack", help="attack of curves.png (default: the setting's)")
    parser.add_argument("--curve-strategies", help="comma-separated panels of curves.png (default: the setting's)")
    parser.add_argument("--curve-byzantine", help="comma-separated malicious-client counts for curves.png")
    parser.add_argument("--no-curves", action="store_true", help="skip the curves runs")
    parser.add_argument("--runs", type=Path, help="folder for the runs (default: outputs/robustness/<setting>)")
    parser.add_argument("--rerun", action="store_true", help="run every cell again, ignoring finished runs")
    parser.add_argument("--keep-ledgers", action="store_true", help="keep each run's ledger and checkpoints")
    parser.add_argument(
        "--extra", default="", help="space-separated Hydra overrides added to every run, e.g. 'codec=rotate_quantize codec.bits=4'"
    )
    args = parser.parse_args(argv)

    base = settings[args.setting]
    setting = Setting(
        overrides=(*base.overrides, *args.extra.split()),
        byzantine=base.byzantine if args.byzantine is None else args.byzantine,
        strategies=base.strategies,
        curve_attack=args.curve_attack or base.curve_attack,
        curve_strategies=tuple(_names(args.curve_strategies) or base.curve_strategies),
        curve_byzantine=tuple(int(b) for b in _names(args.curve_byzantine) or base.curve_byzantine),
    )
    strategies = _names(args.strategies) or list(setting.strategies or _options("strategy", STRATEGY_ORDER))
    attacks = _names(args.attacks) or _options("attack", ATTACK_ORDER)
    seeds = [int(s) for s in _names(args.seeds) or ["0"]]
    runner = Runner(
        setting, args.runs or ROOT / "outputs" / "robustness" / args.setting,
        rounds=args.rounds, rerun=args.rerun, keep_ledgers=args.keep_ledgers,
    )

    jobs = [(a, s, setting.byzantine, seed) for a in attacks for s in strategies for seed in seeds]
    if not args.no_curves:
        curve_jobs = [
            (setting.curve_attack, s, b, seed)
            for s in setting.curve_strategies for b in setting.curve_byzantine for seed in seeds
        ]
        jobs += [job for job in curve_jobs if job not in jobs]
    started = time.perf_counter()
    done: dict[tuple[str, str, int, int], Result] = {}
    for k, job in enumerate(jobs, 1):
        cell_start = time.perf_counter()
        result = runner(*job)
        done[job] = result
        shown = f"{result.accuracy:.3f}" if result.status == "ok" else f"{result.status} {result.note}".strip()
        print(
            f"[{k}/{len(jobs)}] attack={job[0]} strategy={job[1]} byzantine={job[2]} seed={job[3]}: "
            f"{shown} ({time.perf_counter() - cell_start:.1f} s)",
            flush=True,
        )
    wall = time.perf_counter() - started

    matrix = {(a, s): [done[a, s, setting.byzantine, seed] for seed in seeds] for a in attacks for s in strategies}
    curves = [] if args.no_curves else [
        done[setting.curve_attack, s, b, seed]
        for s in setting.curve_strategies for b in setting.curve_byzantine for seed in seeds
    ]
    command = "python benchmarks/robustness.py " + " ".join(sys.argv[1:] if argv is None else argv)
    table = write_outputs(
        args.out, setting_name=args.setting, setting=setting, command=command, attacks=attacks,
        strategies=strategies, matrix=matrix, curves=curves, wall=wall, rounds=args.rounds,
    )
    print(f"\n{table}\n\nwall time {wall / 60:.1f} min; results in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
