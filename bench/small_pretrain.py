"""The small-model regime: the job's real pre-training step against a minimal plain
eager PyTorch loop and against the FLOP roofline, in one run, on the CIFAR-10 recipe.

    python bench/small_pretrain.py                          # CIFAR-10 archive when present, else demo images
    python bench/small_pretrain.py --data demo --threads 1  # bundled photographs, one torch thread
    python bench/small_pretrain.py --set model.compile=blocks  # the job with a recipe override
    python bench/small_pretrain.py --profile 4              # + torch.profiler table of 4 job steps

Candidates, timed in interleaved rounds on the same pre-loaded batches (``harness.py``), each
call running ``--steps-per-call`` steps:

* ``job``: ``run_loop`` (``engine/loop.py``) of a ``PretrainTask`` on the DeepSpeed engine, built
  as ``run_job`` builds it, single rank, fp32, ``--ds-config`` (checkpoint saves stubbed out:
  they are per-run costs, not per-step ones);
* ``job_<config>`` (``--compare-ds``): the same job on other DeepSpeed configs (e.g. ZeRO stage 0);
* ``engine``: the same engine's ``mim_forward`` + ``engine.backward`` + ``engine.step``, no loop;
* ``eager``: the same model (same init) and tokenizer weights, encode (the encoder module as
  it is, NCHW, eager) + forward + backward + gradient clipping + ``torch.optim.AdamW`` with the
  recipe's groups and settings, fp32;
* ``eager_bf16``: that loop with the forward under ``torch.autocast("cpu", torch.bfloat16)``
  (fp32 weights and optimizer): what a user who knows mixed precision writes;
* parts: ``loader`` (the recipe's dataset and collate in this process: img/s per worker),
  ``tokenizer`` (the job's encode), ``plain_tokenizer`` (the eager loop's), ``model`` (forward + backward + AdamW on pre-computed targets);
* ``model_compiled`` (``--compiled-model``): that step with the whole model under ``torch.compile``;
* ``matmul`` / ``matmul_bf16``: the fp32 and bf16 matmul probes of ``roofline.py``, the
  machine's rates in this run (a bf16 candidate's roofline share is against the bf16 rate).

On a CPU without native bf16 (no ``amx_bf16`` / ``avx512_bf16`` flag) bf16 is emulated, several
times slower than fp32: ``eager_bf16`` and ``matmul_bf16`` are then skipped unless ``--bf16 on``
asks for them, and the output names them under ``skipped``.

FLOPs per image are counted by ``FlopCounterMode`` (model forward + backward, tokenizer
encode). The last line is one JSON object: ``ratio`` = job img/s ÷ eager img/s (and
``ratio_vs_eager_bf16``), img/s and roofline share of each part, the engine and loop overheads
in ms per step.
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from harness import emit, median, setup_threads, time_interleaved, timing_parser
from roofline import matmul_probe, matmul_rate
from torch.utils.flop_counter import FlopCounterMode

from beit_ds.config_io import load_recipe
from beit_ds.data import build_pretrain_loader
from beit_ds.distributed import ProcessPlace
from beit_ds.engine.job import Preflight, loader_place, loop_plan
from beit_ds.engine.loop import LoopIO, run_loop
from beit_ds.engine.plan import LoopPlan
from beit_ds.engine.runtime import cpu_has_native_bf16, init_engine, seed_everything, torch_dtype
from beit_ds.engine.state import TrainState
from beit_ds.metrics import MetricWriter
from beit_ds.models import build_mim_model
from beit_ds.optim import param_groups
from beit_ds.recipe import PretrainRecipe
from beit_ds.tasks.pretrain import PretrainTask, mim_forward, preflight
from beit_ds.tokenizers import build_tokenizer

ROOT = Path(__file__).resolve().parents[1]
CIFAR = ROOT / "../shared/datasets/cifar10/cifar10_jpeg.tar.gz"
Step = Callable[[int], None]
BASELINES = {"job", "eager", "eager_bf16", "matmul", "matmul_bf16"}  # timed whatever ``--only`` says
BF16_ONLY = ("eager_bf16", "matmul_bf16")  # what ``--bf16 auto`` skips where bf16 is emulated


class _NoCheckpoints:
    """Stands in for ``CheckpointManager``: a benchmark call saves nothing."""

    def save(self, engine: Any, state: TrainState, extra: dict[str, Any]) -> None:
        pass


def recipe_for(args: argparse.Namespace, out_dir: Path) -> PretrainRecipe:
    """The CIFAR-10 recipe with the shipped demo dVAE; ``--data`` picks the images."""
    data = args.data if args.data != "auto" else ("archive" if CIFAR.exists() else "demo")
    sets = ["tokenizer.path=package:demo_dvae.safetensors", f"checkpoint.output_dir={out_dir}",
            "log.progress_bar=false", "log.tensorboard=false"]
    sets += [f"data.path={CIFAR.resolve()}"] if data == "archive" else ["data.source=demo", "data.repeats=64"]
    return load_recipe(PretrainRecipe, args.recipe, [*sets, *args.set])


def job_parts(recipe: PretrainRecipe, flight: Preflight) -> tuple[PretrainTask, Any, Any, LoopPlan]:
    """(task, engine, loader, plan) built as ``run_job`` builds them (one rank; an endless plan)."""
    task = PretrainTask(recipe, ProcessPlace())
    task.check()
    seed_everything(recipe.schedule.seed)
    engine = init_engine(task.build_model(), recipe.optim, flight.ds_config)
    seed_everything(recipe.schedule.seed + 1000)
    loader = task.build_loader()
    plan = loop_plan(recipe, flight, 10**9, 1)
    task.attach(engine, torch_dtype(flight.precision), plan)
    return task, engine, loader, plan


def job_candidate(recipe: PretrainRecipe, flight: Preflight, batches: list[Any], k: int,
                  out_dir: Path) -> tuple[Step, PretrainTask, Any]:
    """``run_loop`` over ``k`` of ``batches`` per call, the step clock carried across calls."""
    task, engine, _, plan = job_parts(recipe, flight)
    state = TrainState()
    chunk: list[Any] = []
    io = LoopIO(make_loader=lambda epoch, start: iter(chunk), writer=MetricWriter(out_dir, True, False),
                checkpoints=_NoCheckpoints(), extra_state=dict)  # type: ignore[arg-type]

    def call(seed: int) -> None:
        chunk[:] = [batches[(abs(seed) * k + j) % len(batches)] for j in range(k)]
        plan.total_steps = state.step + k
        plan.save_every_steps = plan.save_every_epochs = 10**9
        run_loop(engine, task, state, plan, io, ProcessPlace())

    return call, task, engine


def engine_candidate(task: PretrainTask, engine: Any, batches: list[Any], k: int) -> Step:
    """The engine's step without the loop: ``mim_forward`` + backward + step."""
    def call(seed: int) -> None:
        for j in range(k):
            out = mim_forward(engine, batches[(abs(seed) * k + j) % len(batches)], task.tokenizer, task.dtype)
            engine.backward(out.loss)
            engine.step()

    return call


def plain_encoder(recipe: PretrainRecipe) -> Callable[[torch.Tensor], torch.Tensor]:
    """The tokenizer as a plain PyTorch user runs it: its encoder module in the default NCHW
    layout, eager, argmax over the codes: ``[B, 3, S, S] -> [B, S/d, S/d]``."""
    tokenizer = build_tokenizer(replace(recipe.tokenizer, compile=False)).to(memory_format=torch.contiguous_format)

    @torch.no_grad()
    def encode(images: torch.Tensor) -> torch.Tensor:
        return tokenizer.encoder(images.contiguous()).argmax(dim=1)

    return encode


def eager_parts(recipe: PretrainRecipe, lr: float) -> tuple[torch.nn.Module, Any, torch.optim.Optimizer]:
    """The same model (same seed, so the same init), a plain tokenizer and a plain AdamW."""
    seed_everything(recipe.schedule.seed)
    model = build_mim_model(replace(recipe.model, compile=False), recipe.mim).train()
    o = recipe.optim
    groups = param_groups(model, o.weight_decay, o.layer_decay)
    optimizer = torch.optim.AdamW(groups, lr=lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay)
    return model, plain_encoder(recipe), optimizer


def eager_candidate(recipe: PretrainRecipe, lr: float, batches: list[Any], k: int,
                    targets: list[torch.Tensor] | None = None, compiled: bool = False,
                    autocast: torch.dtype | None = None) -> Step:
    """The naive loop: tokenize (unless ``targets`` are given) + forward + backward + clip + AdamW.
    ``compiled``: the whole model under ``torch.compile`` (forward + loss and, through
    AOTAutograd, backward; drop path as a mask in the graph) — the ``model_compiled`` candidate.
    ``autocast``: the forward under ``torch.autocast`` in that dtype (the ``eager_bf16`` candidate)."""
    model, tokenizer, optimizer = eager_parts(recipe, lr)
    forward = torch.compile(model) if compiled else model
    clip = recipe.optim.clip_grad
    mixed = torch.autocast("cpu", dtype=autocast or torch.bfloat16, enabled=autocast is not None)

    def call(seed: int) -> None:
        for j in range(k):
            i = (abs(seed) * k + j) % len(batches)
            b = batches[i]
            target = targets[i] if targets is not None else tokenizer(b.tokenizer_images)
            with mixed:
                loss = forward(b.images, b.bool_masked_pos, target).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            optimizer.step()

    return call


def tokenizer_candidate(encode: Callable[[torch.Tensor], torch.Tensor], batches: list[Any], k: int) -> Step:
    def call(seed: int) -> None:
        for j in range(k):
            encode(batches[(abs(seed) * k + j) % len(batches)].tokenizer_images)

    return call


def loader_candidate(recipe: PretrainRecipe, k: int) -> Step:
    """``k`` batches per call from the recipe's dataset and collate in this process (no workers)."""
    r = recipe
    data = replace(r.data, num_workers=0)
    loader = build_pretrain_loader(data, r.masking, r.model.grid_size, loader_place(r, ProcessPlace()))
    batches: Iterator[Any] = itertools.chain.from_iterable(loader.at(e) for e in itertools.count())

    def call(seed: int) -> None:
        for _ in range(k):
            next(batches)

    return call


def count_flops(recipe: PretrainRecipe, batch: Any) -> tuple[float, float]:
    """(model forward + backward, tokenizer encode) FLOPs per image."""
    model, tokenizer, _ = eager_parts(recipe, 1e-3)
    with FlopCounterMode(display=False) as tok:
        target = tokenizer(batch.tokenizer_images)
    with FlopCounterMode(display=False) as mod:
        model(batch.images, batch.bool_masked_pos, target).loss.backward()
    n = len(batch.images)
    return mod.get_total_flops() / n, tok.get_total_flops() / n


def profile_job(job: Step, steps: int, path: Path) -> str:
    """torch.profiler of ``steps`` job calls: the top operators by self CPU time, also in ``path``."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], record_shapes=False) as prof:
        for i in range(steps):
            job(10_000 + i)
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30)
    path.write_text(table)
    return table


def parse_args() -> argparse.Namespace:
    p = timing_parser(__doc__.split("\n\n")[0], warmup=1, repeats=5)
    p.add_argument("--recipe", default=str(ROOT / "experiments/cifar10/pretrain.yaml"))
    p.add_argument("--data", default="auto", choices=("auto", "archive", "demo"),
                   help="archive: the CIFAR-10 JPEG archive; demo: the bundled photographs")
    p.add_argument("--ds-config", default=str(ROOT / "ds_configs/zero2_fp32_cpu.json"))
    p.add_argument("--set", action="append", default=[], help="recipe override key=value (repeatable)")
    p.add_argument("--steps-per-call", type=int, default=2)
    p.add_argument("--batches", type=int, default=4, help="distinct pre-loaded batches")
    p.add_argument("--profile", type=int, default=0, help="job calls to profile after timing (0: none)")
    p.add_argument("--compare-ds", default="", help="comma-separated DeepSpeed configs: more job candidates")
    p.add_argument("--compiled-model", action="store_true", help="also time the model step under torch.compile")
    p.add_argument("--only", default="", help="comma-separated candidates (default: all)")
    p.add_argument("--bf16", default="auto", choices=("auto", "on", "off"),
                   help="the bf16 baselines (eager_bf16, matmul_bf16); auto: where the CPU multiplies bf16 natively")
    return p.parse_args()


def bf16_skipped(choice: str) -> dict[str, str]:
    """The bf16 baselines not timed in this run, each with the reason."""
    if choice == "on" or (choice == "auto" and (torch.cuda.is_available() or cpu_has_native_bf16())):
        return {}
    why = "--bf16 off" if choice == "off" else "no native bf16 on this CPU (emulated: several times slower); --bf16 on to time it"
    return dict.fromkeys(BF16_ONLY, why)


def build_candidates(args: argparse.Namespace, recipe: PretrainRecipe, flight: Preflight,
                     out_dir: Path) -> tuple[dict[str, Step], list[Any], Step, set[str]]:
    """The timing candidates, the pre-loaded batches, the job, and the names of the bf16 candidates."""
    k = args.steps_per_call
    batches: list[Any] = []  # filled from the job's own loader once it exists
    job, task, engine = job_candidate(recipe, flight, batches, k, out_dir / "job")
    batches += itertools.islice(task.loader.at(0), args.batches)
    targets = [task.tokenizer.encode(b.tokenizer_images) for b in batches]
    candidates = {
        "job": job,
        "engine": engine_candidate(task, engine, batches, k),
        "eager": eager_candidate(recipe, flight.lr, batches, k),
        "eager_bf16": eager_candidate(recipe, flight.lr, batches, k, autocast=torch.bfloat16),
        "model": eager_candidate(recipe, flight.lr, batches, k, targets),
        "tokenizer": tokenizer_candidate(task.tokenizer.encode, batches, k),
        "plain_tokenizer": tokenizer_candidate(plain_encoder(recipe), batches, k),
        "loader": loader_candidate(recipe, k),
        "matmul": matmul_probe(),
        "matmul_bf16": matmul_probe(torch.bfloat16),
    }
    bf16 = {"eager_bf16"} | ({"job", "engine"} if flight.precision == "bf16" else set())
    for path in filter(None, args.compare_ds.split(",")):  # the same job on other DeepSpeed configs
        other = preflight(recipe, path, 1)
        name = f"job_{Path(path).stem}"
        candidates[name] = job_candidate(recipe, other, batches, k, out_dir / Path(path).stem)[0]
        bf16 |= {name} if other.precision == "bf16" else set()
    if args.compiled_model:
        candidates["model_compiled"] = eager_candidate(recipe, flight.lr, batches, k, targets, compiled=True)
    if args.only:
        keep = set(args.only.split(",")) | BASELINES | {n for n in candidates if n.startswith("job_")}
        candidates = {n: c for n, c in candidates.items() if n in keep}
    candidates = {n: c for n, c in candidates.items() if n not in bf16_skipped(args.bf16)}
    return candidates, batches, job, bf16


def first_calls(candidates: dict[str, Step]) -> dict[str, float]:
    """Seconds of each candidate's first call (compilation, allocator warm-up), untimed later."""
    out = {}
    for name, call in candidates.items():
        start = time.perf_counter()
        call(-1)
        out[name] = round(time.perf_counter() - start, 2)
    return out


def main() -> None:
    args = parse_args()
    setup_threads(args)
    out_dir = Path(tempfile.mkdtemp(prefix="small_pretrain_"))
    recipe = recipe_for(args, out_dir)
    flight = preflight(recipe, args.ds_config, 1)
    candidates, batches, job, bf16 = build_candidates(args, recipe, flight, out_dir)
    model_flops, tok_flops = count_flops(recipe, batches[0])
    first = first_calls(candidates)
    times = time_interleaved(candidates, args.warmup, args.repeats, args.clock)
    result = report(times, recipe, args, model_flops, tok_flops, bf16)
    result["first_call_s"] = first
    result["skipped"] = bf16_skipped(args.bf16)
    for name, why in result["skipped"].items():
        print(f"{name:10s} skipped: {why}")
    result["data"] = recipe.data.source
    result["ds_config"] = Path(args.ds_config).name
    result["overrides"] = args.set
    if args.profile:
        print(profile_job(job, args.profile, out_dir / "profile.txt"))
        result["profile"] = str(out_dir / "profile.txt")
    emit(result)


def report(times: dict[str, list[float]], recipe: PretrainRecipe, args: argparse.Namespace,
           model_flops: float, tok_flops: float, bf16: set[str]) -> dict[str, Any]:
    """img/s, roofline share and overheads of every candidate; ``ratio`` = job ÷ eager. The
    roofline share of a bf16 candidate is against the bf16 matmul rate (its tokenizer runs in
    fp32, so that share is a lower bound)."""
    rate = matmul_rate(median(times.pop("matmul")))
    rate_bf16 = matmul_rate(median(times.pop("matmul_bf16"))) if "matmul_bf16" in times else None
    k, b = args.steps_per_call, recipe.schedule.micro_batch_size
    flops = {name: model_flops + tok_flops for name in times if name.startswith(("job", "engine", "eager"))}
    flops |= {"model": model_flops, "model_compiled": model_flops, "tokenizer": tok_flops, "plain_tokenizer": tok_flops,
              "loader": 0.0}
    result: dict[str, Any] = {}
    for name, values in times.items():
        secs = median(values)
        result[f"{name}_img_s"] = round(k * b / secs, 1)
        roof = rate_bf16 if name in bf16 else rate
        if flops[name] and roof:
            result[f"{name}_roofline"] = round(flops[name] * k * b / secs / roof, 3)
        print(f"{name:10s} {k * b / secs:8.1f} img/s  calls {[round(t, 2) for t in values]}")
    ms = {name: 1000 * median(v) / k for name, v in times.items()}
    for name in (n for n in ms if n == "job" or n.startswith("job_")):
        key = "ratio" if name == "job" else f"{name}_ratio"
        result[key] = round(ms["eager"] / ms[name], 3)
        if "eager_bf16" in ms:
            result[f"{key}_vs_eager_bf16"] = round(ms["eager_bf16"] / ms[name], 3)
    paired = [e / j for e, j in zip(times["eager"], times["job"])]
    result["ratio_paired"] = round(median(paired), 3)  # round by round, under the same load
    own_eager = "eager_bf16" if "engine" in bf16 else "eager"
    if "engine" in ms and own_eager in ms:  # against the eager loop of the engine's own precision
        result["engine_overhead_ms_per_step"] = round(ms["engine"] - ms[own_eager], 1)
        result["loop_overhead_ms_per_step"] = round(ms["job"] - ms["engine"], 1)
    result.update(model_mflop_per_image=round(model_flops / 1e6, 1), tokenizer_mflop_per_image=round(tok_flops / 1e6, 1),
                  matmul_gflops=round(rate / 1e9, 1), matmul_bf16_gflops=round(rate_bf16 / 1e9, 1) if rate_bf16 else None,
                  batch=b, threads=torch.get_num_threads(), clock=args.clock,
                  repeats=args.repeats, steps_per_call=k)
    return result


if __name__ == "__main__":
    main()
