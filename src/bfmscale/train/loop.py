"""Train to a FLOP budget: the step count comes from analytic per-step FLOPs; the last step is cut in sequences so
that the run ends at the budget, and the cosine schedule ends exactly there."""

from __future__ import annotations

import gc
import logging
import resource
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from bfmscale.config import RunConfig, TrainConfig
from bfmscale.data.dataset import PreparedDataset, load_prepared
from bfmscale.device import describe_machine, resolve_device, resolve_precision
from bfmscale.errors import BfmError
from bfmscale.eval.ranking import evaluate, evaluate_splits
from bfmscale.malloc import release_free_memory, tune_malloc
from bfmscale.model.accounting import StepShape, embedder_share, param_counts, seed002_params, step_flops
from bfmscale.model.bfm import BehaviorModel
from bfmscale.model.catalog import build_catalog
from bfmscale.model.transformer import explicit_attention
from bfmscale.train import fused_ce
from bfmscale.train.data import Sequences, Windows, build_sequences, gather, plan_epoch, train_windows
from bfmscale.train.negatives import NegativeSampler
from bfmscale.train.schedule import lr_at
from bfmscale.train.step import Objective, train_step

log = logging.getLogger(__name__)


@dataclass
class PlannedStep:
    """Window indices of one step, its shape and its analytic FLOPs."""

    idx: np.ndarray
    shape: StepShape
    flops: float


@dataclass
class RunResult:
    """Everything a run reports: final metrics, the curve, per-user evaluation, accounting and resources."""

    config: dict[str, Any]
    metrics: dict[str, float]
    curve: pd.DataFrame
    per_user: pd.DataFrame
    info: dict[str, Any] = field(default_factory=dict)


def shape_of(win: Windows, idx: np.ndarray, seqs: Sequences, count_unique: bool = True) -> StepShape:
    """The StepShape of a batch of training windows; distinct targets are counted only with `count_unique` (the
    in-batch objective's candidates; other objectives do not need them)."""
    lengths = win.lengths[idx]
    t = int(lengths.max()) - 1
    n = int((lengths - 1).sum())
    uniq = 0
    if n and count_unique:
        spans = [seqs.items[s + 1 : s + ln] for s, ln in zip(win.starts[idx], lengths)]
        uniq = int(torch.cat(spans).unique().numel())
    return StepShape(batch=len(idx), seq_len=t, targets=n, unique_targets=uniq)


def plan_steps(cfg: RunConfig, win: Windows, seqs: Sequences, flops_fn, rng: np.random.Generator) -> tuple[list[PlannedStep], int]:
    """Steps until the budget is spent; the last one keeps just enough sequences not to exceed it.
    Returns the plan and the number of epochs started."""
    inbatch = cfg.train.objective == "inbatch"

    def planned(idx: np.ndarray) -> PlannedStep:
        shape = shape_of(win, idx, seqs, count_unique=inbatch)
        return PlannedStep(idx, shape, flops_fn(shape))

    plan: list[PlannedStep] = []
    spent, epochs = 0.0, 0
    budget = cfg.train.flops
    while spent < budget:
        epochs += 1
        for idx in plan_epoch(win, cfg.train.batch_size, rng):
            step = planned(idx)
            if spent + step.flops > budget:
                lo, hi = 1, len(idx)  # largest prefix that fits; at least one sequence so the budget is reached
                while lo < hi:
                    mid = (lo + hi + 1) // 2
                    if spent + planned(idx[:mid]).flops <= budget:
                        lo = mid
                    else:
                        hi = mid - 1
                plan.append(planned(idx[:lo]))
                return plan, epochs
            plan.append(step)
            spent += step.flops
            if spent >= budget:
                return plan, epochs
    return plan, epochs


def make_optimizer(model: torch.nn.Module, lr: float, cfg) -> torch.optim.Optimizer:
    """AdamW; weight decay only on matrices of Linear layers (not embeddings, biases or norms). On CUDA its fused
    kernels (one launch per group instead of a dozen foreach ops: small-model steps are launch-bound there); on the
    CPU torch's default (fused measured 0.98-1.02x there)."""
    decay, no_decay = [], []
    for mod in model.modules():
        for name, p in mod.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            (decay if isinstance(mod, torch.nn.Linear) and name == "weight" else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    on_cuda = bool(decay + no_decay) and all(p.device.type == "cuda" for p in decay + no_decay)
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(cfg.betas), fused=True if on_cuda else None)


def reset_peak_memory(device: torch.device) -> None:
    """Start this run's peak-memory window: CUDA's counter, or (Linux) the process's RSS high-water mark."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    gc.collect()
    release_free_memory()  # memory kept by tune_malloc for an earlier run is not this run's peak
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass  # elsewhere the process-lifetime peak is reported


def peak_memory_bytes(device: torch.device) -> int:
    """CUDA max allocated since reset_peak_memory, or the process's peak RSS (VmHWM) on CPU."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def memory_estimate_bytes(n_params: int, shape: StepShape, cfg: RunConfig, n_items: int, bytes_per: int,
                          device: torch.device) -> int:
    """Rough analytic peak: fp32 weights, grads and two Adam moments, plus saved activations (with the [T, T]
    attention probabilities where CPU bf16 attention is explicit) and the objective's logits (the fused CEs'
    per-chunk tensors, chunked as on `device`; in-batch: all [N, M] logits) and, when sampled, the step's [N, K]
    int64 negative codes."""
    m, tc = cfg.model, cfg.train
    acts = bytes_per * m.n_layers * shape.batch * shape.seq_len * (16 * m.d_model + 2 * m.d_ff)
    acts += bytes_per * m.n_layers * shape.batch * m.n_heads * shape.seq_len  # SDPA log-sum-exp
    rows = shape.batch * m.n_heads
    if device.type == "cpu" and bytes_per == 2 and explicit_attention(rows, shape.seq_len, m.d_model // m.n_heads):
        acts += 2 * (m.n_layers + 1) * rows * shape.seq_len**2  # explicit bf16 attention: each layer's saved
        # probabilities, and one layer's scores while they are made
    if tc.objective == "full":
        logits = fused_ce.working_bytes(shape.targets, 4 * n_items, device, whole_table=True)
    elif tc.objective == "sampled":
        k1 = tc.n_negatives + 1
        dense = fused_ce.dense_route(n_items, k1, device, bytes_per == 2, table_grad=not tc.freeze_embedder,
                                     d=m.d_model)
        row = fused_ce.sampled_row_bytes(n_items, k1, m.d_model, bytes_per, dense)
        logits = fused_ce.working_bytes(shape.targets, row, device, whole_table=dense)
        logits += 8 * shape.targets * tc.n_negatives  # the codes, drawn for the whole step (K=1024, N=14k: 115 MB)
    else:
        logits = 3 * 4 * shape.targets * shape.unique_targets
    return 16 * n_params + acts + logits


def ready_for_training(model: BehaviorModel, tc: TrainConfig) -> None:
    """The process's malloc tuning (`train.tune_malloc`), stage-2 freezing (`train.freeze_embedder`) and optional
    compilation (`train.compile`) of a placed model: what every training step (runs and benches) runs under."""
    if tc.tune_malloc:
        tune_malloc()
    if tc.freeze_embedder:
        model.freeze_embedder()
    if tc.compile:
        model.contextualizer.compile()  # in place: state_dict keys unchanged, checkpoints stay loadable


def train_run(cfg: RunConfig, ds: PreparedDataset | None = None, out_dir: Path | None = None) -> RunResult:
    """Train one configuration to its FLOP budget, evaluate on validation and test, return the result."""
    t_start = time.perf_counter()
    tc, mc = cfg.train, cfg.model
    if tc.threads:
        torch.set_num_threads(tc.threads)
    device = resolve_device(tc.device)
    amp = resolve_precision(tc.precision, device)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    ds = ds or load_prepared(Path(cfg.data.prepared_dir) / cfg.data.dataset)
    catalog = build_catalog(ds, mc.text_buckets)
    if tc.objective == "sampled" and tc.n_negatives >= catalog.n_items:
        raise BfmError(f"train.n_negatives is {tc.n_negatives}; expected fewer than the catalog's {catalog.n_items} items")
    seqs = build_sequences(ds)
    events = seqs.event_inputs  # model and accounting read only what `EventInputs.used_by` gives them
    if not events.used_by(mc).width:  # e.g. an ID model on ML-1M's ratings: no [B, T, F] gather per step and batch
        seqs = replace(seqs, features=None)
    model = BehaviorModel(mc, catalog, events)
    if tc.init_from:
        path = Path(tc.init_from)
        if not path.is_file():
            raise BfmError(f"train.init_from: {path} not found; expected a model checkpoint (model.pt)")
        try:
            state = torch.load(path, map_location="cpu")
        except Exception as exc:  # torch raises pickle, zip or runtime errors for a file that is not a checkpoint
            raise BfmError(f"train.init_from: {path} is not a model checkpoint ({type(exc).__name__}); "
                           "expected a run's model.pt") from None
        try:
            model.load_state_dict(state)
        except (RuntimeError, AttributeError) as exc:
            reason = str(exc).strip().splitlines()[-1].strip()
            raise BfmError(f"train.init_from: {path} does not fit this model ({reason}); expected a checkpoint "
                           "saved with the same model settings") from None
    model.to(device)
    ready_for_training(model, tc)
    counts = param_counts(mc, catalog, events)
    reset_peak_memory(device)

    win = train_windows(seqs, mc.max_len)
    flops_fn = lambda shape: step_flops(mc, tc, catalog, shape, events)["total"]  # noqa: E731
    plan, epochs = plan_steps(cfg, win, seqs, flops_fn, rng)
    total_flops = sum(s.flops for s in plan)
    total_tokens = sum(s.shape.targets for s in plan)
    steps = len(plan)
    epoch_tokens = max(1, int(win.lengths.sum() - len(win)))  # training transitions per epoch
    log.info("run: %s embedder, d=%d L=%d, %.3g params (embedder share %.1f%%), budget %.3g FLOPs -> %d steps, "
             "%.3g tokens (%.2f epochs), %s, %s", mc.embedder, mc.d_model, mc.n_layers, counts["total"],
             100 * embedder_share(counts), tc.flops, steps, total_tokens, total_tokens / epoch_tokens,
             device, "bf16" if amp else "fp32")

    sampler = NegativeSampler(tc.sampler, catalog.n_items, catalog.popularity, tc.sampler_alpha)
    objective = Objective(tc, sampler, torch.Generator(device).manual_seed(cfg.seed))
    opt = make_optimizer(model, tc.lr, tc)
    switch_step = int(tc.sgd_switch_frac * steps) if tc.sgd_switch_frac else None
    lr_scale = 1.0
    eval_users = None
    if tc.eval_users is not None and tc.eval_users < seqs.n_users:  # validated >= 1
        eval_users = np.sort(np.random.default_rng(cfg.seed + 1).choice(seqs.n_users, tc.eval_users, replace=False))
    eval_at = {int(round(steps * (i + 1) / (tc.n_evals + 1))) - 1 for i in range(tc.n_evals)} if tc.n_evals else set()
    log_at = {int(steps * f) for f in np.arange(tc.log_every_frac, 1.0, tc.log_every_frac)}

    curve, evals = [], []
    spent = tokens = 0.0
    loss_sum = loss_n = 0.0
    train_time = 0.0
    model.train()
    for i, st in enumerate(plan):
        t0 = time.perf_counter()
        if switch_step is not None and i == switch_step:
            opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=tc.sgd_lr, momentum=0.9)
            lr_scale = tc.sgd_lr / tc.lr
        lr = lr_at(i, steps, tc.lr, tc.warmup_frac, tc.min_lr_ratio) * lr_scale
        for g in opt.param_groups:
            g["lr"] = lr
        items, feats = gather(seqs, win.subset(st.idx))
        items = items.to(device, non_blocking=True)
        feats = feats.to(device, non_blocking=True) if feats is not None else None
        value = float(train_step(model, objective, opt, items, feats, amp, tc.grad_clip))
        train_time += time.perf_counter() - t0
        if not np.isfinite(value):
            raise BfmError(f"training diverged at step {i} (loss {value}); expected a finite loss: lower train.lr")
        spent += st.flops
        tokens += st.shape.targets
        loss_sum += value
        loss_n += 1
        curve.append({"step": i + 1, "flops": spent, "tokens": tokens, "epochs": tokens / epoch_tokens, "loss": value,
                      "lr": lr, "train_time": train_time})
        if i in log_at:
            log.info("  %3.0f%% step %d/%d  loss %.4f  %.3g FLOPs  %.0f tokens/s", 100 * spent / total_flops, i + 1,
                     steps, loss_sum / loss_n, spent, tokens / train_time)
            loss_sum = loss_n = 0.0
        if i in eval_at:
            res = evaluate(model, seqs, "valid", mc.max_len, device, users=eval_users, exclude_seen=cfg.data.exclude_seen,
                           objective=objective.eval_loss(), autocast_dtype=amp)
            evals.append({"step": i + 1, "flops": spent, "tokens": tokens,
                          **{f"valid_{k}": v for k, v in res.metrics.items()}})

    curve_df = pd.DataFrame(curve)
    if evals:
        curve_df = curve_df.merge(pd.DataFrame(evals), on=["step", "flops", "tokens"], how="left")
    metrics: dict[str, float] = {"train_loss_final": float(np.mean([c["loss"] for c in curve[-max(1, steps // 20):]]))}
    per_user = []
    t_eval = time.perf_counter()
    final = evaluate_splits(model, seqs, ("valid", "test"), mc.max_len, device, exclude_seen=cfg.data.exclude_seen,
                            objective=objective.eval_loss(), autocast_dtype=amp)
    for which, res in final.items():
        metrics.update({f"{which}_{k}": v for k, v in res.metrics.items()})
        per_user.append(res.per_user.assign(split=which))
    eval_time = time.perf_counter() - t_eval
    if out_dir is not None and tc.save_checkpoint:
        from bfmscale.atomic import atomic_path

        with atomic_path(Path(out_dir) / "model.pt") as tmp:
            torch.save(model.state_dict(), tmp)
    biggest = max(plan, key=lambda s: s.flops)
    info = {
        "params": counts, "params_seed002": seed002_params(mc), "embedder_share": embedder_share(counts),
        "flops": total_flops, "flops_budget": tc.flops, "tokens": total_tokens, "steps": steps,
        "epochs": total_tokens / epoch_tokens, "epochs_started": epochs,
        "train_time": train_time, "eval_time": eval_time, "wall_time": time.perf_counter() - t_start,
        "tokens_per_s": total_tokens / train_time, "flops_per_s": total_flops / train_time,
        "device": str(device), "machine": describe_machine(device), "precision": "bf16" if amp else "fp32",
        "threads": torch.get_num_threads(),
        "peak_memory_bytes": peak_memory_bytes(device),
        "memory_estimate_bytes": memory_estimate_bytes(sum(p.numel() for p in model.parameters()), biggest.shape, cfg,
                                                       catalog.n_items, 2 if amp else 4, device),
        "n_users": seqs.n_users, "n_items": catalog.n_items,
    }
    log.info("done: test ndcg@10 %.4f hr@10 %.4f mrr %.4f ce %.3f  (%.0f s train, %.0f s eval)",
             metrics["test_ndcg@10"], metrics["test_hr@10"], metrics["test_mrr"], metrics["test_ce"], train_time, eval_time)
    return RunResult(config=cfg.to_dict(), metrics=metrics, curve=curve_df, per_user=pd.concat(per_user, ignore_index=True),
                     info=info)
