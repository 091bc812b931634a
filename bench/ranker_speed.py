"""Speed matrix of the LLM ranker recipe: tokens/s, s/step and peak RSS of SFT and DMPO steps.

model {tiny, smollm2-135m} x stage {sft, dmpo (reference precomputed | reference model)} x ZeRO {2, 3}; every
setting is one real 2-rank run: `torch.distributed.run` (the launcher `fusionrec train --nproc 2` uses) starts
this module's rank entry, which builds the `dmpo` recipe from a resolved config (`build_dmpo`, exactly what
`fusionrec train dmpo` builds) and fits it with the generic Trainer on DeepSpeed engines. One fresh process
pair per setting, so each setting's peak RSS is its own.

What is measured (rank 0's clock; ranks are in lock-step through ZeRO collectives):
- tokens = non-pad tokens the POLICY processed (the loop's `BatchStats.tokens` = attention-mask sum of every
  micro-batch, summed over ranks; for DMPO all 1 + k sequences of a group; a reference model's forward of the
  same tokens is NOT counted again), over `timed` optimizer steps that follow `warmup` untimed ones;
- s/step over the same steps; `setup_s` = rank start → first step (model build, engines, and for a
  precomputed reference its one scoring pass over the groups);
- peak RSS = `ru_maxrss` of each rank gathered, max over ranks. It covers the process's whole life, i.e. it
  includes interpreter start-up, imports and model construction, not only the timed steps.

JSON lines compare two settings measured in the same run: ZeRO-3 (ours) vs ZeRO-2 (baseline) of each stage,
and precomputed (ours) vs model (baseline) reference at each ZeRO stage; each as tokens/s and as peak RSS.

    python -m fusionrec.bench.ranker_speed [--quick] [--record docs/results/ranker_speed.jsonl]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fusionrec.bench import cli_parser, emit, provenance

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

SHORT = {"tiny": "tiny", "smollm2-135m": "smollm2"}


@dataclass(frozen=True)
class ModelPlan:
    """Per-model sizes: context window, micro-batches (SFT pairs / DMPO groups per rank), LoRA as shipped."""

    name: str
    max_length: int
    micro_sft: int
    micro_dmpo: int
    lora_rank: int
    lora_alpha: int
    warmup: int
    timed: int


@dataclass(frozen=True)
class SpeedPlan:
    models: tuple[ModelPlan, ...]
    runs: tuple[str, ...] = ("sft", "dmpo-refpre", "dmpo-refmodel")
    zeros: tuple[int, ...] = (2, 3)
    k: int = 3
    nproc: int = 2
    note: str = ""


# LoRA on q,k,v as in the shipped configs: r 8 (dmpo_tiny) for the tiny Llama, r 16 (dmpo_7b) for SmolLM2.
TINY = ModelPlan(
    "tiny", max_length=1024, micro_sft=2, micro_dmpo=1, lora_rank=8, lora_alpha=16, warmup=2, timed=8
)
SMOLLM2 = ModelPlan(
    "smollm2-135m", max_length=160, micro_sft=2, micro_dmpo=1, lora_rank=16, lora_alpha=32, warmup=1, timed=3
)
FULL = SpeedPlan(models=(TINY, SMOLLM2))
QUICK = SpeedPlan(models=(TINY,), note="quick: tiny model only")


@dataclass(frozen=True)
class Setting:
    model: ModelPlan
    run: str  # sft | dmpo-refpre | dmpo-refmodel
    zero: int

    @property
    def stage(self) -> str:
        return "sft" if self.run == "sft" else "dmpo"

    @property
    def key(self) -> str:
        return f"{SHORT.get(self.model.name, self.model.name)}-{self.run}-zero{self.zero}"


@dataclass
class Measured:
    """One setting's result as written by rank 0 (see `_rank_main`) plus the launcher's wall time."""

    tokens: int
    steps: int
    seconds: float
    setup_s: float
    peak_rss_mb: float
    rss_mb_per_rank: list[float]
    losses: list[float]
    truncated: int
    import_rss_mb: float
    setup_rss_mb: float
    end_rss_mb: float
    wall_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds

    @property
    def s_per_step(self) -> float:
        return self.seconds / self.steps


# ---------------------------------------------------------------------------------------------- launching


def overrides(s: Setting, plan: SpeedPlan, sft_file: str, dpo_file: str, run_dir: Path) -> list[str]:
    """Dotted overrides of the shipped `dmpo_tiny` config for one setting (TOML values)."""
    m = s.model
    micro = m.micro_sft if s.stage == "sft" else m.micro_dmpo
    steps_per_epoch = m.timed  # data for `timed` steps per epoch: warm-up steps come from the same groups
    out = [
        f"dmpo.stage={s.stage!r}",
        f"dmpo.sft_file={sft_file!r}",
        f"dmpo.dpo_file={dpo_file!r}",
        f"dmpo.limit={plan.nproc * micro * steps_per_epoch}",
        "dmpo.epochs=1000",  # the step budget stops the run
        f"dmpo.model.name_or_path={m.name!r}",
        f"dmpo.model.max_length={m.max_length}",
        f"dmpo.model.lora.rank={m.lora_rank}",
        f"dmpo.model.lora.alpha={m.lora_alpha}",
        f"dmpo.dmpo.k={plan.k}",
        f"train.run_dir={str(run_dir)!r}",
        f"train.max_steps={m.warmup + m.timed}",
        "train.log_every=1",  # the timer reads the loop's global token count, which is reduced at each log
        "train.tensorboard=false",
        "train.progress=false",
        "train.checkpoint.save_at_end=false",
        f"train.deepspeed.zero_stage={s.zero}",
        f"train.deepspeed.micro_batch_size={micro}",
        "train.deepspeed.grad_accum=1",
    ]
    if s.stage == "dmpo":
        out.append(f"dmpo.dmpo.reference={'model' if s.run == 'dmpo-refmodel' else 'precomputed'!r}")
    return out


def measure(s: Setting, plan: SpeedPlan, sft_file: str, dpo_file: str, work: Path) -> Measured:
    """Run one setting as `plan.nproc` real ranks under torch.distributed.run; returns rank 0's report."""
    from fusionrec.launch.config import load_config, write_resolved
    from fusionrec.ports import free_port

    run_dir = work / s.key
    cfg = load_config("dmpo_tiny", overrides(s, plan, sft_file, dpo_file, run_dir))
    resolved = write_resolved(cfg, run_dir)
    out = run_dir / "speed.json"
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    log = run_dir / "launch.log"
    for attempt in (1, 2):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(plan.nproc),
               "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
               "-m", "fusionrec.bench.ranker_speed", "--rank-entry", str(resolved), str(out), str(s.model.warmup)]  # fmt: skip
        t0 = time.perf_counter()
        with log.open("w") as fh:
            code = subprocess.call(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT)
        wall = time.perf_counter() - t0
        if code == 0 and out.is_file():
            break
        text = log.read_text()
        # The port was free when picked but taken before the rendezvous store bound it: a race, not a
        # failure of the setting, so one retry on a new port (the launch's own errors are never retried).
        if attempt == 1 and "EADDRINUSE" in text:
            continue
        tail = [ln for ln in text.splitlines() if ln.strip()][-6:]
        raise RuntimeError(f"speed setting {s.key} failed (exit {code}); see {log}; its last lines: {tail}")
    return Measured(**json.loads(out.read_text()), wall_s=wall)


# ---------------------------------------------------------------------------------------------- one rank


def _max_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _current_rss_mb() -> float:
    """Resident set now (VmRSS), unlike ru_maxrss not dominated by a one-off construction peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return float(line.split()[1]) / 1024.0
    return float("nan")


def _rank_main(config_path: str, out_path: str, warmup: int) -> None:
    """One rank: the dmpo recipe as `fusionrec train dmpo` builds it, fitted with a step timer."""
    t_start = time.perf_counter()
    from fusionrec.fileio import atomic_write_text
    from fusionrec.launch.config import load_config
    from fusionrec.trainer.loop import Trainer
    from fusionrec.trainer.recipes.dmpo.build import build as build_dmpo
    from fusionrec.trainer.strategy import DeepspeedStrategy

    import_rss = _max_rss_mb()  # interpreter + torch/DeepSpeed/transformers imports, before any model
    cfg = load_config(config_path, [])
    if cfg.train.log_every != 1 or cfg.train.max_steps <= warmup:
        raise ValueError(f"{config_path}: needs train.log_every = 1 and train.max_steps > warmup={warmup}")
    strategy = DeepspeedStrategy(cfg.train.deepspeed)
    strategy.setup()
    built = build_dmpo(cfg, strategy)
    timer = StepTimer(warmup)
    Trainer(cfg.train, strategy, built.module, built.train_loader, [timer]).fit()
    rss = strategy.all_gather_object((import_rss, timer.setup_rss, _max_rss_mb(), _current_rss_mb()))
    if strategy.is_rank0:
        report = timer.report(t_start) | {
            "peak_rss_mb": max(r[2] for r in rss),
            "rss_mb_per_rank": [r[2] for r in rss],
            "import_rss_mb": max(r[0] for r in rss),
            "setup_rss_mb": max(r[1] for r in rss),
            "end_rss_mb": max(r[3] for r in rss),
            "truncated": built.module.truncation.truncated,
        }
        atomic_write_text(out_path, json.dumps(report))
    strategy.barrier()
    strategy.teardown()


def _callback_base() -> type:
    from fusionrec.trainer.callbacks import Callback

    return Callback


class StepTimer(_callback_base()):
    """Clock and global token count at the end of every step after `warmup` (needs log_every = 1)."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.marks: list[
            tuple[float, int]
        ] = []  # (time, tokens_seen) at the end of step warmup, warmup+1, ...
        self.losses: list[float] = []
        self.t_fit = 0.0
        self.setup_rss = 0.0

    def on_fit_start(self, trainer) -> None:
        self.t_fit = time.perf_counter()
        self.setup_rss = _max_rss_mb()  # peak through model build, engines and any reference precompute

    def on_log(self, trainer, metrics: dict[str, float]) -> None:
        self.losses += [v for key, v in metrics.items() if key.endswith("/loss")]

    def on_step_end(self, trainer, phase) -> None:
        if trainer.state.step >= self.warmup:
            self.marks.append((time.perf_counter(), trainer.state.tokens_seen))

    def report(self, t_start: float) -> dict[str, Any]:
        (t0, tok0), (t1, tok1) = self.marks[0], self.marks[-1]
        return {
            "tokens": tok1 - tok0,
            "steps": len(self.marks) - 1,
            "seconds": t1 - t0,
            "setup_s": self.t_fit - t_start,
            "losses": self.losses,
        }


# ---------------------------------------------------------------------------------------------- JSON lines


def settings(plan: SpeedPlan) -> list[Setting]:
    return [Setting(m, r, z) for m in plan.models for r in plan.runs for z in plan.zeros]


def _name(s: Setting, k: int) -> str:
    stage = "sft" if s.stage == "sft" else f"dmpo-k{k}"
    return f"ranker-{SHORT.get(s.model.name, s.model.name)}-{stage}-zero{s.zero}"


def pair_lines(
    ours: Setting, base: Setting, results: dict[Setting, Measured | str], name: str, plan: SpeedPlan
) -> list[dict]:
    """A tokens/s line and a peak-RSS line comparing two settings measured in this run."""
    failed = {x.key: results[x] for x in (ours, base) if isinstance(results[x], str)}
    if failed:  # one setting's failure costs its lines, not the rest of a 12-minute matrix
        return [{"bench": f"{name}-tokens_per_s", "ours": None, "baseline": None, "error": failed}]
    a, b = results[ours], results[base]
    context = {
        "ours_setting": ours.key,
        "baseline_setting": base.key,
        "model": ours.model.name,
        "k": plan.k if ours.stage == "dmpo" else None,
        "nproc": plan.nproc,
        "micro_batch_per_rank": ours.model.micro_sft if ours.stage == "sft" else ours.model.micro_dmpo,
        "max_length": ours.model.max_length,
        "lora": f"r{ours.model.lora_rank} alpha{ours.model.lora_alpha} q,k,v",
        "warmup_steps": ours.model.warmup,
        "note": "tokens = non-pad tokens through the policy, all ranks; peak RSS = max over ranks of ru_maxrss "
        "(includes start-up and model construction); CPU fp32" + (f"; {plan.note}" if plan.note else ""),
    }
    speed = {
        "bench": f"{name}-tokens_per_s",
        "ours": a.tokens_per_s,
        "baseline": b.tokens_per_s,
        "ratio": a.tokens_per_s / b.tokens_per_s,
        "unit": "tokens/s",
        "timed_steps": a.steps,
        "tokens": a.tokens,
        "baseline_tokens": b.tokens,
        "s_per_step": a.s_per_step,
        "baseline_s_per_step": b.s_per_step,
        "peak_rss_mb": a.peak_rss_mb,
        "baseline_peak_rss_mb": b.peak_rss_mb,
        "setup_s": a.setup_s,
        "baseline_setup_s": b.setup_s,
        "wall_s": a.wall_s,
        "baseline_wall_s": b.wall_s,
        "first_loss": a.losses[0],
        "truncated_prompts": a.truncated,
    } | context
    memory = {
        "bench": f"{name}-peak_rss_mb",
        "ours": a.peak_rss_mb,
        "baseline": b.peak_rss_mb,
        "ratio": a.peak_rss_mb / b.peak_rss_mb,
        "unit": "MB (lower is better)",
        "rss_mb_per_rank": a.rss_mb_per_rank,
        "baseline_rss_mb_per_rank": b.rss_mb_per_rank,
        # ru_maxrss is monotonic: after imports <= after setup (model, engines, precompute) <= end of run
        "after_imports_mb": a.import_rss_mb,
        "baseline_after_imports_mb": b.import_rss_mb,
        "after_setup_mb": a.setup_rss_mb,
        "baseline_after_setup_mb": b.setup_rss_mb,
        "current_rss_after_steps_mb": a.end_rss_mb,  # VmRSS, max over ranks, with the engines still alive
        "baseline_current_rss_after_steps_mb": b.end_rss_mb,
    } | context
    return [speed, memory]


def lines(plan: SpeedPlan, results: dict[Setting, Measured | str]) -> list[dict]:
    """ZeRO-3 vs ZeRO-2 for every stage, then precomputed vs model reference at every ZeRO stage."""
    out: list[dict] = []
    for m in plan.models:
        for run in plan.runs:
            if 2 in plan.zeros and 3 in plan.zeros:
                z3, z2 = Setting(m, run, 3), Setting(m, run, 2)
                suffix = "" if run == "sft" else f"-{run.split('-')[1]}"
                out += pair_lines(z3, z2, results, _name(z3, plan.k) + suffix, plan)
        if "dmpo-refpre" in plan.runs and "dmpo-refmodel" in plan.runs:
            for z in plan.zeros:
                pre, ref = Setting(m, "dmpo-refpre", z), Setting(m, "dmpo-refmodel", z)
                out += pair_lines(pre, ref, results, _name(pre, plan.k) + "-refpre-vs-refmodel", plan)
    return out


def run_matrix(
    plan: SpeedPlan, sft_file: str, dpo_file: str, work: Path, log=None
) -> tuple[list[dict], dict]:
    """Measure every setting (one 2-rank launch each), then build the lines; returns (lines, results)."""
    results: dict[Setting, Measured | str] = {}
    for s in settings(plan):
        try:
            results[s] = measure(s, plan, sft_file, dpo_file, work)
        except RuntimeError as err:  # a failed launch; its message (with the log's errors) goes in the line
            results[s] = str(err)
            if log is not None:
                log(f"[ranker-speed] {s.key}: FAILED {err}")
            continue
        if log is not None:
            r = results[s]
            log(f"[ranker-speed] {s.key}: {r.tokens_per_s:.1f} tokens/s, {r.s_per_step:.2f} s/step, "
                f"peak RSS {r.peak_rss_mb:.0f} MB, wall {r.wall_s:.0f} s")  # fmt: skip
    return lines(plan, results), results


def run(quick: bool = False, data_dir: Path | None = None) -> list[dict]:
    """The speed matrix on the paper's Amazon Movie files (SFT file; DPO file with k = 3 rows per group)."""
    if data_dir is None:
        from fusionrec.bench.ranker import _dmpo_dir

        data_dir = _dmpo_dir()
    plan = QUICK if quick else FULL
    sft = str(data_dir / "rec_Amazon_Movie_sft_ranking.json")
    dpo = str(data_dir / f"rec_Amazon_Movie_dpo_ranking_{plan.k}.json")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ranker-speed-") as tmp:
        out, _ = run_matrix(
            plan, sft, dpo, Path(tmp), log=lambda msg: print(msg, file=sys.stderr, flush=True)
        )
    out.append({"bench": "ranker-speed-matrix-seconds", "ours": time.perf_counter() - t0, "unit": "s",
                "settings": len(settings(plan)), "quick": quick})  # fmt: skip
    meta = provenance()
    return [{**line, **meta} for line in out]


if __name__ == "__main__":
    if sys.argv[1:2] == ["--rank-entry"]:
        _rank_main(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    else:
        args = cli_parser(__doc__, "tiny model only").parse_args()
        emit(run(quick=args.quick), args.record)
