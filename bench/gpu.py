"""`fusionrec bench gpu`: the GPU suites, each one prepared run that writes its JSON lines as it goes.

A GPU session is short (minutes of device time), so a suite is one command that needs nothing the GPU image
lacks (torch, transformers, tokenizers, pytest; no deepspeed, ray or webdataset), and it appends each JSON
line to ``--record`` the moment that measurement finishes: a run cut off by its time limit still brings back
everything it measured.

Suite ``core`` (built):

1. ``gpu_env``: the device, torch / CUDA / transformers versions.
2. ``gpu_tests`` (run last, within FUSIONREC_GPU_TESTS_LIMIT_S, default 300 s, each finished test reported):
   ``pytest -m gpu`` over the test files that hold CUDA tests (passed / failed / skipped); the
   scorer's, the recipes' (bf16 on CUDA vs the CPU's fp32) and the CUDA <-> CPU checkpoint round trip train,
   so they need deepspeed (gpu_wheels).
3. ``gpu_decode``: trie-constrained beam search at t5-small shape (d512, ff2048, 6+6 layers, 8 heads, the
   real T5 vocabulary, random weights), beam 20, top 20, over all 12,101 Amazon-Beauty title IDs: ours
   batched vs HF ``generate`` + ``prefix_allowed_tokens_fn`` (IDGenRec/OpenP5's protocol) at batch 1 and at
   our batch; users/s and whether the top-20 items agree (fp32, TF32 off: the comparison is exact math).
4. ``gpu_idgen``: diverse ID generation (Algorithm 1) for the 12,101 items, batched vs the one-item loop on
   a prefix; items/s and whether the prefix got the same IDs.

Suite ``quality`` (built; needs deepspeed and webdataset, carried as wheels by launch/gpu_wheels.sh): one
``bench quality`` run on real Amazon Beauty on the one GPU, with nothing the image lacks beyond those wheels:
the corpus prepared without Ray (``--shard-engine local``), SASRec-CE trained on the GPU, the generative recipe
at t5-small shape (idgenrec_beauty_gpu, ``--nproc 1``, ``--variant`` titles or collab, each with a schedule
sized for ``--minutes``), its checkpoints scored on 1,000 validation users (the curve, the selection) and the
selected one on all 22,363 test users, in this process on the GPU (``--actors 0 --device cuda``). Its lines are
bench quality's, each recorded as the run ends; the stage JSONs under ``--cache`` survive a cut-off run.

Suite ``train`` (built; needs deepspeed, carried as a wheel; bench/_gpu_train.py): the IDGenRec recommender at
t5-small shape on one fixed batch of real Beauty prompts, DeepSpeed ZeRO-1 and ZeRO-2 (our strategy, one rank)
vs a plain torch loop: samples/s, tokens/s, model FLOPs utilisation against a bf16 matmul measured in the same
run, host syncs per step, first/last loss; the overhead of each stage over the plain loop (goal <= 10%).

Suite ``llm`` (built; needs deepspeed, carried as a wheel; bench/_gpu_llm.py): a randomly initialised
Llama-2-7B-shape decoder in bf16, LoRA r16 on all linears, ZeRO-3 on one GPU, at palr_7b's micro batch and
length (2 x 2048): SFT and DMPO k=3 (reference precomputed) on a fixed batch, tokens/s and the peak memory
beside trainer/llm/memory.py's prediction. Needs no ../shared data.

``--cpu-smoke`` runs the same code at tiny sizes on the CPU (the normal test suite does), so a broken script
is caught before device time is spent; its lines say ``smoke: true`` and measure nothing.

    python -m fusionrec.bench.gpu [--suite core|train|llm|quality] [--variant collab] [--minutes 3] [--cache D]
        [--cpu-smoke] [--record F]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from fusionrec.bench import find_shared, provenance, record

T5_SMALL = {"d_model": 512, "d_ff": 2048, "num_layers": 6, "num_decoder_layers": 6, "num_heads": 8}
SMOKE_SHAPE = {"d_model": 32, "d_ff": 64, "num_layers": 1, "num_decoder_layers": 1, "num_heads": 2}
PLANS = {
    "gpu": {"shape": T5_SMALL, "ref_users": 32, "users": 2048, "batch": 256, "items": None, "ref_items": 256},
    "smoke": {"shape": SMOKE_SHAPE, "ref_users": 2, "users": 4, "batch": 2, "items": 24, "ref_items": 6},
}
# Suite quality. The GPU recipe's schedule per variant, for a run of --minutes (overrides after the variant's
# own): nothing has been measured on a GPU yet, so the decay length is an estimate (t5-small from scratch at
# 512 samples per step, ~15 steps/s on the short 3-item prompts of collab, ~8 on titles' 20 items) that the
# first run's steps/minute replaces; the checkpoint selection on validation users covers a wrong guess.
QUALITY_SCHEDULES = {  # variant -> (estimated steps per minute, its other overrides)
    "titles": (480, ()),
    "collab": (900, ("train.optim.lr=2e-3",)),
    "collab256": (900, ("train.optim.lr=2e-3",)),  # collab on 256 clusters per ID level (the CPU's best ID)
}


def quality_schedule(variant: str, minutes: float) -> list[str]:
    """The lr decays linearly (to the recipe's floor) over the steps `minutes` are estimated to hold."""
    per_minute, others = QUALITY_SCHEDULES[variant]
    steps = max(1, int(per_minute * minutes))
    warmup = min(200, steps // 5)
    return [f"train.optim.total_steps={steps}", f"train.optim.warmup_steps={warmup}", *others]


QUALITY_ARGS = {  # bench quality's arguments on the GPU, and in the CPU smoke run (a tiny model, few users)
    "gpu": ["--config", "idgenrec_beauty_gpu", "--nproc", "1", "--actors", "0", "--device", "cuda",
            "--shard-engine", "local", "--eval-batch", "256", "--valid-users", "1000", "--test-users", "0"],
    "smoke": ["--config", "idgenrec_beauty_gpu", "--nproc", "1", "--actors", "0", "--device", "cpu",
              "--shard-engine", "local", "--quick", "--valid-users", "20", "--test-users", "40",
              *(f"--set=idgenrec.{m}.{k}={v}" for m in ("recommender", "id_generator")
                for k, v in SMOKE_SHAPE.items()),
              "--set=train.deepspeed.micro_batch_size=16", "--set=idgenrec.data.num_workers=0"],
}  # fmt: skip
GPU_TEST_FILES = ("tests/test_beam_search.py", "tests/test_trie.py", "tests/test_baselines.py",
                  "tests/test_palr_scoring.py")
# the generative scorer on CUDA and the recipes in bf16 on CUDA: they train, so only where deepspeed is
GPU_TRAINING_TEST_FILES = ("tests/test_generative_eval.py", "tests/test_recipe_precision.py",
                           "tests/test_device_checkpoint.py")
REPO = Path(__file__).resolve().parents[1]


class Lines:
    """Each line appended to `path` (atomically) and, with `echo`, printed the moment it is measured."""

    def __init__(self, path: str, meta: dict[str, Any], echo: bool) -> None:
        self.path, self.meta, self.echo, self.all = path, meta, echo, []

    def add(self, **line: Any) -> None:
        line = {**line, **self.meta}
        self.all.append(line)
        if self.echo:
            print(json.dumps(line), flush=True)
        if self.path:
            record([line], self.path)


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(device, fn, *args, **kwargs) -> tuple[Any, float]:
    _sync(device)
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    _sync(device)
    return out, time.perf_counter() - t0


def env_line(lines: Lines, device) -> None:
    import torch
    import transformers

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    lines.add(bench="gpu_env", device=name, torch=torch.__version__, cuda=torch.version.cuda,
              transformers=transformers.__version__, python=sys.version.split()[0])  # fmt: skip


def gpu_tests(lines: Lines, limit_s: float) -> None:
    """The `gpu`-marked tests, run where CUDA is (skipped under --cpu-smoke: they would only skip), last in the
    suite and within `limit_s`: a run cut off there still reports each test that finished (pytest -v)."""
    files = GPU_TEST_FILES + (GPU_TRAINING_TEST_FILES if importlib.util.find_spec("deepspeed") else ())
    cmd = [sys.executable, "-m", "pytest", "-v", "-m", "gpu", "-p", "no:cacheprovider", *files]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = proc.communicate(timeout=limit_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    outcomes = pytest_outcomes(out)
    lines.add(bench="gpu_tests", returncode=proc.returncode, timed_out=proc.returncode == -9,
              counts={k: sum(v == k for v in outcomes.values()) for k in ("PASSED", "FAILED", "ERROR", "SKIPPED")},
              not_passed={t: v for t, v in outcomes.items() if v != "PASSED"},
              summary=(out.strip().splitlines() or [""])[-1][-300:], seconds=round(time.perf_counter() - t0, 1))  # fmt: skip


def pytest_outcomes(verbose_output: str) -> dict[str, str]:
    """{test id: PASSED | FAILED | ERROR | SKIPPED} from `pytest -v` lines ("path::name PASSED [ 10%]")."""
    found = {}
    for line in verbose_output.splitlines():
        parts = line.split()
        if len(parts) >= 2 and "::" in parts[0] and parts[1] in ("PASSED", "FAILED", "ERROR", "SKIPPED"):
            found[parts[0]] = parts[1]
    return found


def gpu_decode(lines: Lines, plan: dict, device) -> None:
    from fusionrec.bench.decode import _hf, _model, _ours, _queries, _same, textual_ids
    from fusionrec.trainer.decoding import CompiledTrie
    from transformers import AutoTokenizer

    beauty, tok_dir = _shared("data/amazon_beauty"), _shared("assets/t5-tokenizer")
    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    asins, ids, _ = textual_ids(beauty / "item_plain_text.txt")
    cpu_trie = CompiledTrie.from_tokenizer(tok, ids, asins, decoder_start_token_id=tok.pad_token_id)
    trie = cpu_trie.to(device)
    model = _model(len(tok), tok.pad_token_id, tok.eos_token_id, plan["shape"]).to(device)
    prompts = _queries(beauty / "user_sequence.txt", dict(zip(asins, ids, strict=True)), plan["users"])
    enc = {k: v.to(device) for k, v in tok(prompts, padding=True, truncation=True, max_length=512,
                                           return_tensors="pt").items()}  # fmt: skip
    ref = {k: v[: plan["ref_users"]] for k, v in enc.items()}
    b = plan["batch"]
    (
        _ours(model, {k: v[:b] for k, v in enc.items()}, trie, b),
        _hf(model, {k: v[:1] for k, v in enc.items()}, cpu_trie, 1),
    )
    hf1, hf1_s = _timed(device, _hf, model, ref, cpu_trie, 1)
    hfb, hfb_s = _timed(device, _hf, model, ref, cpu_trie, min(b, plan["ref_users"]))
    ours_ref, _ = _timed(device, _ours, model, ref, trie, b)
    ours_all, ours_s = _timed(device, _ours, model, enc, trie, b)
    n, n_ref = enc["input_ids"].shape[0], plan["ref_users"]
    common = {"items": trie.num_items, "beams": 20, "shape": plan["shape"], "ours_batch": b, "users_ours": n,
              "users_reference": n_ref, "unit": "users/s"}  # fmt: skip
    for label, base, base_s in (("hf_batch_1", hf1, hf1_s), ("hf_same_batch", hfb, hfb_s)):
        match, diff = _same(ours_ref[:2], base)
        lines.add(bench="gpu_decode", model=f"ours vs {label}", ours=round(n / ours_s, 2),
                  baseline=round(n_ref / base_s, 2), ratio=round((n / ours_s) / (n_ref / base_s), 2),
                  match=match, max_score_diff=diff, **common)  # fmt: skip


def gpu_idgen(lines: Lines, plan: dict, device) -> None:
    from fusionrec.bench.idgen import batched_vs_loop, load_items
    from fusionrec.trainer.idgen.generator import IDGenConfig
    from fusionrec.trainer.models import ModelConfig, build_seq2seq, load_tokenizer

    texts = load_items(_shared("data/amazon_beauty") / "item_plain_text.txt", plan["items"])
    tok = load_tokenizer(_shared("assets/t5-tokenizer"))
    shape = plan["shape"]
    model = build_seq2seq(ModelConfig("tiny-t5", seed=0, **shape), tokenizer=tok).eval().to(device)
    line = batched_vs_loop(model, tok, texts, plan["ref_items"], IDGenConfig(batch_size=plan["batch"]),
                           sync=lambda: _sync(device))  # fmt: skip
    lines.add(bench="gpu_idgen", model="batched vs one-item loop", shape=shape, **line)


def quality_suite(lines: Lines, args: argparse.Namespace) -> None:
    """One bench quality run (the variant's GPU schedule for --minutes); its lines recorded as it returns."""
    from fusionrec.bench import quality

    if args.variant not in QUALITY_SCHEDULES:
        raise ValueError(f"--variant {args.variant!r}: no GPU schedule; one of {sorted(QUALITY_SCHEDULES)}")
    argv = [*QUALITY_ARGS["smoke" if args.cpu_smoke else "gpu"], "--variant", args.variant]
    minutes = args.minutes or (0.1 if args.cpu_smoke else 3.0)
    argv += ["--minutes", str(minutes), "--every", str(args.every or (10 if args.cpu_smoke else 500))]
    argv += [f"--set={o}" for o in quality_schedule(args.variant, minutes)]
    argv += ["--cache", args.cache] if args.cache else []
    for line in quality.run(argv=argv):
        lines.add(**line)


def _shared(relative: str) -> Path:
    found = find_shared(relative)
    if found is None:
        raise FileNotFoundError(f"{relative} not found under ../shared or $FUSIONREC_SHARED_DIR")
    return found


def run(quick: bool = False, argv: list[str] | None = None, echo: bool = False) -> list[dict]:
    """`quick` = --cpu-smoke. Without a GPU and without --cpu-smoke: one line saying so, nothing measured.
    `echo`: print each line as it is measured (`python -m`; `fusionrec bench gpu` prints what this returns)."""
    import torch

    args = _parser().parse_args([*(argv or []), *(["--cpu-smoke"] if quick else [])])
    smoke = args.cpu_smoke
    if not smoke and not torch.cuda.is_available():
        return [{"bench": "gpu", "skipped": "no CUDA device (use --cpu-smoke to check the script on CPU)"}]
    needs_shared = args.suite != "llm"
    if needs_shared and (find_shared("assets/t5-tokenizer/tokenizer.json") is None
                         or find_shared("data/amazon_beauty") is None):  # fmt: skip
        return [{"bench": "gpu", "skipped": "../shared data/amazon_beauty or assets/t5-tokenizer missing"}]
    device = torch.device("cpu" if smoke else "cuda")
    lines = Lines(args.record, {"suite": args.suite, "smoke": smoke, **provenance()}, echo)
    plan = PLANS["smoke" if smoke else "gpu"]
    env_line(lines, device)
    if args.suite == "llm":
        from fusionrec.bench._gpu_llm import PLANS as LLM_PLANS
        from fusionrec.bench._gpu_llm import run_llm_suite

        run_llm_suite(lines, LLM_PLANS["smoke" if smoke else "gpu"], device)
        return lines.all
    if args.suite == "quality":
        quality_suite(lines, args)
        return lines.all
    if args.suite == "train":
        from fusionrec.bench._gpu_train import PLANS as TRAIN_PLANS
        from fusionrec.bench._gpu_train import run_train_suite

        beauty, tok_dir = _shared("data/amazon_beauty"), _shared("assets/t5-tokenizer")
        run_train_suite(lines, beauty, tok_dir, TRAIN_PLANS["smoke" if smoke else "gpu"], device)
        return lines.all
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # exact-math comparisons
    gpu_decode(lines, plan, device)
    gpu_idgen(lines, plan, device)
    if not smoke:  # last: they train (minutes); the measurements above are already recorded
        gpu_tests(lines, float(os.environ.get("FUSIONREC_GPU_TESTS_LIMIT_S", 300)))
    return lines.all


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suite", choices=["core", "train", "llm", "quality"], default="core")
    p.add_argument("--variant", default="collab", help="quality: the generative recipe's variant")
    p.add_argument("--minutes", type=float, default=0.0, help="quality: training minutes (3; smoke: 0.1)")
    p.add_argument("--every", type=int, default=0, help="quality: steps between checkpoints (500; smoke: 10)")
    p.add_argument("--cache", default="", help="quality: bench quality's stage folder")
    p.add_argument("--cpu-smoke", action="store_true", help="tiny sizes on the CPU: checks the script only")
    p.add_argument("--record", default="", help="append each line to this JSONL file as it is measured")
    return p


def main() -> None:
    lines = run(argv=sys.argv[1:], echo=True)
    if lines and "skipped" in lines[0]:
        print(json.dumps(lines[0]), flush=True)


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
