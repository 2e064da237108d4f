"""Train-to-budget: budget respected, schedule ends at the budget, windows cover each transition once, determinism."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from bfmscale.config import load_run_config
from bfmscale.errors import BfmError
from bfmscale.train.data import build_sequences, eval_windows, gather, plan_epoch, train_windows
from bfmscale.train.loop import make_optimizer, train_run
from bfmscale.train.schedule import lr_at
from synthetic import make_prepared


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    return make_prepared(tmp_path_factory.mktemp("train"), n_users=20, n_items=40, min_len=6, max_len=40)


def cfg(*overrides):
    base = ["model.d_model=16", "model.n_heads=2", "model.d_ff=32", "model.max_len=12", "train.batch_size=4",
            "train.flops=3e7", "train.n_evals=1", "train.precision=fp32", "train.device=cpu", "train.threads=1"]
    return load_run_config(None, base + list(overrides))


def test_windows_cover_every_training_transition_once(ds):
    seqs = build_sequences(ds)
    win = train_windows(seqs, 5)
    assert win.lengths.max() <= 6 and win.lengths.min() >= 2
    targets = []
    for s, n in zip(win.starts, win.lengths):
        targets.extend(range(s + 1, s + n))
    expected = []
    for u in range(seqs.n_users):
        b, e = seqs.offsets[u], seqs.offsets[u + 1] - 2  # the last two events are validation and test
        expected.extend(range(b + 1, e))
    assert sorted(targets) == expected


def test_eval_windows_end_right_before_target(ds):
    seqs = build_sequences(ds)
    win, tgt = eval_windows(seqs, 4, "test")
    assert (win.lengths <= 4).all()
    np.testing.assert_array_equal(win.starts + win.lengths, seqs.offsets[1:] - 1)
    assert tgt.tolist() == [int(seqs.items[i]) for i in seqs.offsets[1:] - 1]
    items, _ = gather(seqs, win)
    assert (items[torch.arange(len(win)), torch.from_numpy(win.lengths - 1)] > 0).all()


def test_plan_epoch_is_a_permutation(ds):
    seqs = build_sequences(ds)
    win = train_windows(seqs, 5)
    batches = plan_epoch(win, 3, np.random.default_rng(0), bucket=2)
    assert sorted(np.concatenate(batches).tolist()) == list(range(len(win)))


def test_schedule_warmup_and_end():
    total = 100
    lrs = [lr_at(i, total, 1.0, 0.1, 0.1) for i in range(total)]
    assert lrs[0] == pytest.approx(0.1) and max(lrs) == pytest.approx(1.0)
    assert lrs[-1] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))


def test_budget_is_spent_exactly_with_a_partial_last_step(ds):
    res = train_run(cfg(), ds)
    info = res.info
    assert info["flops"] <= info["flops_budget"]
    assert info["flops"] > 0.98 * info["flops_budget"]
    assert res.curve["flops"].iloc[-1] == pytest.approx(info["flops"])
    assert res.curve["lr"].iloc[-1] == pytest.approx(1e-3 * 0.1)
    assert res.curve["tokens"].iloc[-1] == info["tokens"]
    for k in ("test_ndcg@10", "test_hr@10", "test_mrr", "test_ce", "valid_ndcg@50", "valid_objective"):
        assert np.isfinite(res.metrics[k])
    assert "valid_ndcg@10" in res.curve.columns


def test_more_compute_means_more_steps(ds):
    a = train_run(cfg("train.flops=1e7", "train.n_evals=0"), ds).info
    b = train_run(cfg("train.flops=4e7", "train.n_evals=0"), ds).info
    assert b["steps"] > 2 * a["steps"] and b["epochs"] > a["epochs"]


@pytest.mark.parametrize("extra", [[], ["model.embedder=features", "train.objective=sampled", "train.n_negatives=5"],
                                   ["train.objective=sampled", "train.n_negatives=7", "train.sampler=popularity",
                                    "train.precision=auto"]])
def test_same_config_and_seed_same_metrics(ds, extra, device):
    extra = [*extra, f"train.device={device.type}"]
    a = train_run(cfg(*extra), ds)
    b = train_run(cfg(*extra), ds)
    c = train_run(cfg(*extra, "seed=1"), ds)
    assert a.info["device"].startswith(device.type) and a.info["machine"].startswith(f"{device.type}: ")
    assert a.metrics == b.metrics
    assert a.curve["loss"].tolist() == b.curve["loss"].tolist()
    assert a.curve["loss"].tolist() != c.curve["loss"].tolist()


def test_optimizer_decays_linear_weights_only_and_fuses_on_cuda(device):
    net = torch.nn.Sequential(torch.nn.Embedding(10, 8), torch.nn.Linear(8, 8), torch.nn.LayerNorm(8)).to(device)
    opt = make_optimizer(net, 1e-3, cfg("train.weight_decay=0.1").train)
    decay, no_decay = opt.param_groups
    assert [p is net[1].weight for p in decay["params"]] == [True] and decay["weight_decay"] == 0.1
    assert len(no_decay["params"]) == 4 and no_decay["weight_decay"] == 0.0  # embedding, bias, norm weight and bias
    assert bool(opt.defaults["fused"]) == (device.type == "cuda")
    before = net[1].weight.detach().clone()
    net(torch.tensor([1, 2], device=device)).square().sum().backward()
    opt.step()
    assert not torch.equal(before, net[1].weight)


def test_training_learns_a_repeated_pattern(tmp_path):
    """On data where every user walks the same item cycle, a trained model ranks the next item near the top."""
    import pandas as pd

    from bfmscale.data.dataset import load_prepared
    from bfmscale.data.prepare import PrepareConfig, prepare
    from bfmscale.data.readers import RawData

    rows = []
    for u in range(30):
        start = u % 10
        for t in range(15):
            rows.append({"user_id": f"u{u}", "item_id": f"i{(start + t) % 10}", "timestamp": t})
    raw = RawData(events=pd.DataFrame(rows), events_source="cycle.parquet")
    prepare(raw, tmp_path / "cycle", PrepareConfig(), "cycle")
    ds = load_prepared(tmp_path / "cycle")
    res = train_run(cfg("train.flops=3e8", "train.lr=5e-3", "model.dropout=0.0", "train.n_evals=0"), ds)
    assert res.metrics["test_hr@1"] > 0.9


def test_too_many_negatives_is_an_error_naming_the_field(ds):
    with pytest.raises(BfmError, match="train.n_negatives"):
        train_run(cfg("train.objective=sampled", "train.n_negatives=40"), ds)


def test_two_stage_freeze_from_checkpoint(ds, tmp_path):
    first = train_run(cfg("model.embedder=features", "train.save_checkpoint=true"), ds, out_dir=tmp_path)
    assert (tmp_path / "model.pt").is_file() and first.info["steps"] > 0
    second = train_run(cfg("model.embedder=features", "train.freeze_embedder=true", "train.objective=sampled",
                           "train.n_negatives=8", f"train.init_from={tmp_path / 'model.pt'}"), ds)
    assert second.info["flops"] <= second.info["flops_budget"]
    # frozen steps cost less: more steps fit in the same budget
    assert second.info["steps"] > first.info["steps"]


def test_bad_checkpoint_is_an_error_naming_init_from(ds, tmp_path):
    train_run(cfg("train.save_checkpoint=true", "train.n_evals=0"), ds, out_dir=tmp_path)
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    cases = [(tmp_path / "missing.pt", [], "not found"), (tmp_path / "notes.txt", [], "is not a model checkpoint"),
             (tmp_path / "model.pt", ["model.d_model=32"], "does not fit this model (size mismatch")]
    for path, extra, expected in cases:
        with pytest.raises(BfmError, match=re.escape(f"train.init_from: {path} {expected}")) as err:
            train_run(cfg(f"train.init_from={path}", "train.n_evals=0", *extra), ds)
        assert "\n" not in str(err.value)


def test_divergence_stops_the_run_with_an_error_naming_the_step(ds, monkeypatch):
    import bfmscale.train.loop as loop

    real = loop.train_step
    calls = []

    def nan_on_third(*args, **kwargs):
        calls.append(1)
        value = real(*args, **kwargs)
        return torch.tensor(float("nan")) if len(calls) == 3 else value

    monkeypatch.setattr(loop, "train_step", nan_on_third)
    with pytest.raises(BfmError, match=re.escape("training diverged at step 2 (loss nan)")):
        train_run(cfg("train.n_evals=0"), ds)


def test_event_features_with_gaps_train_and_count(tmp_path):
    """Numeric event features with missing values, categorical and list-valued ones all reach a feature model: the
    run trains to finite metrics (a gap once made every loss nan), and its parameter count includes the code tables."""
    from bfmscale.model.accounting import param_counts
    from bfmscale.model.catalog import EventInputs, build_catalog

    rich = make_prepared(tmp_path, n_users=20, n_items=40, min_len=6, max_len=40, event_extras=True)
    inputs = build_sequences(rich).event_inputs
    assert inputs.numeric == 3 and len(inputs.categorical) == 1 and len(inputs.multi) == 1
    res = train_run(cfg("model.embedder=features"), rich)
    assert all(np.isfinite(v) for v in res.metrics.values()) and np.isfinite(res.curve["loss"]).all()
    mc = load_run_config(None, ["model.embedder=features", "model.d_model=16", "model.n_heads=2", "model.d_ff=32",
                                "model.max_len=12"]).model
    catalog = build_catalog(rich, mc.text_buckets)
    assert res.info["params"] == param_counts(mc, catalog, inputs)
    assert res.info["params"]["embedder"] > param_counts(mc, catalog, EventInputs(numeric=3))["embedder"]


@pytest.mark.skipif(not any(shutil.which(c) for c in ("g++", "c++", "clang++")),
                    reason="torch.compile (inductor) on CPU needs a C++ compiler")
def test_compiled_run_matches_eager_and_checkpoint_loads(ds, tmp_path):
    """train.compile=true trains the same model (up to kernel rounding) and saves a checkpoint an eager model loads."""
    eager = train_run(cfg("train.n_evals=0", "model.dropout=0.0"), ds)
    compiled = train_run(cfg("train.n_evals=0", "model.dropout=0.0", "train.compile=true", "train.save_checkpoint=true"),
                         ds, out_dir=tmp_path)
    assert compiled.info["steps"] == eager.info["steps"]
    np.testing.assert_allclose(compiled.curve["loss"], eager.curve["loss"], rtol=1e-3)
    assert compiled.metrics["test_ce"] == pytest.approx(eager.metrics["test_ce"], rel=1e-3)
    state = torch.load(tmp_path / "model.pt")
    assert not any("_orig_mod" in k for k in state)
    train_run(cfg("train.n_evals=0", f"train.init_from={tmp_path / 'model.pt'}", "train.flops=1e6"), ds)


def test_validation_curve_on_a_user_subset_leaves_training_and_final_metrics_alone(ds):
    everyone = train_run(cfg("train.n_evals=2", "train.eval_users=null"), ds)
    subset = train_run(cfg("train.n_evals=2", "train.eval_users=5"), ds)
    at_least_all = train_run(cfg("train.n_evals=2", "train.eval_users=20"), ds)  # ds has 20 users
    assert subset.metrics == everyone.metrics
    assert subset.curve["loss"].tolist() == everyone.curve["loss"].tolist()
    points = everyone.curve["valid_ce"].notna()
    assert points.sum() == 2 and subset.curve["valid_ce"].notna().equals(points)
    assert subset.curve.loc[points, "valid_ce"].tolist() != everyone.curve.loc[points, "valid_ce"].tolist()
    assert at_least_all.curve.loc[points, "valid_ce"].tolist() == everyone.curve.loc[points, "valid_ce"].tolist()


def test_adam_to_sgd_switch_changes_the_run(ds):
    a = train_run(cfg("train.n_evals=0"), ds)
    b = train_run(cfg("train.n_evals=0", "train.sgd_switch_frac=0.5", "train.sgd_lr=0.05"), ds)
    half = len(a.curve) // 2
    assert a.curve["loss"].iloc[:half].tolist() == b.curve["loss"].iloc[:half].tolist()
    assert a.curve["loss"].iloc[half + 1 :].tolist() != b.curve["loss"].iloc[half + 1 :].tolist()
    assert b.curve["lr"].iloc[-1] == pytest.approx(0.05 * 0.1)


def test_cli_run_writes_outputs_and_prints_summary(ds, tmp_path, capsys):
    from bfmscale.cli import main

    prepared = tmp_path / "prepared"
    prepared.mkdir()
    (prepared / "synth").symlink_to(ds.path)
    rc = main(["run", "model.d_model=16", "model.n_heads=2", "model.max_len=8", "train.flops=1e7", "train.n_evals=0",
               "data.dataset=synth", f"data.prepared_dir={prepared}", "--out", str(tmp_path / "run")])
    out = capsys.readouterr().out
    assert rc == 0
    assert "embedder share" in out and "NDCG@10" in out and "12·L·d²" in out
    assert "MiB (process RSS; training tensors estimated at " in out  # this run is on the CPU
    assert re.search(r"^machine: cpu: .*threads, torch ", out, re.M)  # what its time was measured on
    for name in ("config.json", "metrics.json", "curve.parquet", "per_user.parquet"):
        assert (tmp_path / "run" / name).is_file()


def test_peak_memory_is_per_run():
    """A big allocation in an earlier 'run' does not leak into the next run's peak, even with malloc tuned."""
    from bfmscale.malloc import tune_malloc
    from bfmscale.train.loop import peak_memory_bytes, reset_peak_memory

    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("needs Linux /proc/self/clear_refs")
    tune_malloc()  # what every training run does first: freed blocks stay in the heap
    cpu = torch.device("cpu")
    reset_peak_memory(cpu)
    big = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
    high = peak_memory_bytes(cpu)
    del big
    reset_peak_memory(cpu)
    assert peak_memory_bytes(cpu) < high - 32 * 2**20


@pytest.mark.parametrize("tune", [True, False])
def test_ready_for_training_tunes_malloc_as_configured(monkeypatch, tune):
    """Runs and benches share one readying step, so the benches time what training runs under (train.tune_malloc)."""
    from bfmscale.config import ModelConfig, TrainConfig
    from bfmscale.model.bfm import BehaviorModel
    from bfmscale.model.catalog import ItemCatalog
    from bfmscale.train import loop

    calls = []
    monkeypatch.setattr(loop, "tune_malloc", lambda: calls.append(1) or True)
    loop.ready_for_training(BehaviorModel(ModelConfig(d_model=8, n_heads=1, d_ff=16, max_len=4), ItemCatalog(5)),
                            TrainConfig(tune_malloc=tune))
    assert calls == ([1] if tune else [])


def test_memory_estimate_holds_the_fused_ce_chunks_not_all_logits():
    """The estimate's logits term is what the fused CEs hold at once: [N, I] fp32 (three of them) while N fits
    one chunk, then one chunk's worth however many targets; a GPU's chunks are larger; sampled K=1023 over 4,000
    items takes the dense route (fp32 [I+1] rows), K=63 the gather route ([K+1, d] rows), each plus the step's
    [N, K] int64 negative codes."""
    from bfmscale.model.accounting import StepShape
    from bfmscale.train import fused_ce
    from bfmscale.train.loop import memory_estimate_bytes

    n_items, cpu, gpu = 4000, torch.device("cpu"), torch.device("cuda")

    def logits(n, device, *extra):
        run = cfg(*extra)
        est = lambda t: memory_estimate_bytes(1000, StepShape(64, 50, t), run, n_items, 4, device)  # noqa: E731
        return est(n) - est(0)

    fit = fused_ce.CHUNK_BYTES // (4 * n_items)
    assert logits(fit, cpu) == 3 * 4 * fit * n_items
    assert logits(10 * fit, cpu) == logits(100 * fit, cpu) == logits(fit, cpu) < logits(100 * fit, gpu)
    dense, gathered = 3 * 100 * 4 * (n_items + 1), 3 * 100 * 4 * 16 * 64  # d=16
    assert logits(100, cpu, "train.objective=sampled", "train.n_negatives=1023") == dense + 100 * 8 * 1023
    assert logits(100, cpu, "train.objective=sampled", "train.n_negatives=63") == gathered + 100 * 8 * 63


def test_memory_estimate_counts_explicit_attention_probabilities(monkeypatch):
    """Where CPU bf16 attention is explicit, the estimate adds each layer's saved [B, heads, T, T] bf16 probabilities
    and one layer's scores; with fp32, on a GPU, or where the rule picks flash, nothing."""
    from bfmscale.model import transformer
    from bfmscale.model.accounting import StepShape
    from bfmscale.train.loop import memory_estimate_bytes

    run = cfg("model.n_layers=3", "model.n_heads=2", "model.d_model=64")
    shape = StepShape(16, 200, 3000)
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    est = {}
    for amx in (True, False):  # d_head 32, T=200: flash with AMX (T > 4 d_head), explicit without
        monkeypatch.setattr(transformer, "cpu_has_amx", lambda amx=amx: amx)
        est[amx] = {(b, d.type): memory_estimate_bytes(1000, shape, run, 100, b, d) for b in (2, 4) for d in (cpu, gpu)}
    assert est[False][(2, "cpu")] - est[True][(2, "cpu")] == 2 * (3 + 1) * 16 * 2 * 200 * 200
    for key in ((4, "cpu"), (2, "cuda"), (4, "cuda")):
        assert est[False][key] == est[True][key]


@pytest.mark.parametrize("objective,k,route", [("full", 0, None), ("sampled", 63, "gather"), ("sampled", 127, "bag")],
                         ids=["full", "sampled-K63-gather", "sampled-K127-dense"])
@pytest.mark.parametrize("embedder,frozen", [("id", False), ("id", True), ("features", False)],
                         ids=["id", "id-frozen", "features"])
def test_training_step_never_builds_all_logits_or_candidate_vectors(tmp_path, monkeypatch, embedder, frozen,
                                                                     objective, k, route):
    """Forward + backward of a step holds no tensor near the size of all targets' [N, I] catalog logits (full
    softmax) or [N, K+1, d] candidate vectors (sampled): the fused CEs take a few targets at a time. The objectives
    before them built those (old frozen K=1024 run at SASRec size: 14.45 GiB peak RSS, now 1.49)."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    from bfmscale.config import ModelConfig, TrainConfig
    from bfmscale.model.bfm import BehaviorModel
    from bfmscale.model.catalog import build_catalog
    from bfmscale.train import fused_ce
    from bfmscale.train.negatives import NegativeSampler
    from bfmscale.train.step import Objective

    class LargestOutput(TorchDispatchMode):
        """Records the largest number of elements of any tensor an op returns."""

        largest = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            self.largest = max([self.largest] + [t.numel() for t in tree_leaves(out) if isinstance(t, torch.Tensor)])
            return out

    d = 16
    data = make_prepared(tmp_path, n_users=200, n_items=2500, min_len=20, max_len=30)
    mc = ModelConfig(embedder=embedder, d_model=d, n_heads=2, d_ff=32, max_len=20, dropout=0.0, mlp_hidden=24)
    tc = TrainConfig(objective=objective, n_negatives=max(k, 1), freeze_embedder=frozen)
    catalog, seqs = build_catalog(data, mc.text_buckets), build_sequences(data)
    n_items = catalog.n_items  # the synthetic users leave some items unseen
    monkeypatch.setattr(fused_ce, "CHUNK_BYTES", 4 * n_items * 16)  # about 16 targets per dense chunk
    torch.manual_seed(0)
    model = BehaviorModel(mc, catalog, seqs.event_inputs)
    if frozen:
        model.freeze_embedder()
    items, feats = gather(seqs, train_windows(seqs, mc.max_len).subset(np.arange(64)))
    if route:
        assert fused_ce.sampled_route(n_items, k + 1, items.device, False, table_grad=not frozen, d=d) == route
    obj = Objective(tc, NegativeSampler("uniform", n_items), torch.Generator().manual_seed(0))
    with LargestOutput() as mode:
        loss, n = obj.loss(model, items, feats)
        loss.backward()
    whole = n * (n_items if objective == "full" else (k + 1) * d)
    assert whole > 8 * items[:, 1:].numel() * 3 * d  # all targets' tensor would dwarf the model's largest, q/k/v
    assert mode.largest < whole / 4, (mode.largest, whole)
