"""Side by side with the peer a user would pick instead: RecBole 1.2.1's SASRec vs our ID-only model, same data.

ML-1M leave-last-out (data/prepared/ml-1m; see `peer_data` for how RecBole gets the same split), d=64, 2 layers, 2
heads, inner 256, dropout 0.2, full-softmax CE, Adam 1e-3, max length 50 and 200, the same torch threads, the same
wall-clock checkpoints. RecBole runs in a throwaway virtualenv (bench/.peer/, git-ignored) made by this script:
recbole is installed with --no-deps beside torch==2.13.0 (its pins would pull ray<=2.6.3), and driven through Config /
create_dataset / data_preparation / SASRec directly (recbole.quick_start imports ray). Ours trains first, one full
schedule per checkpoint (a model whose FLOP budget fits that wall time at the rate a short probe measured; a box whose
speed drifts makes it over- or undershoot); RecBole then trains continuously and is evaluated when its clock reaches
the seconds ours actually trained for each checkpoint, so the two are compared at equal training time.
Evaluation time is not counted, nor is RecBole's data loader: its clock runs over forward, backward and optimizer step
only, while ours also counts building each batch. Both are ranked under both conventions, from the same trained model:
over every item, which is what RecBole's evaluator does for sequential models (it masks history only for general
recommenders; its `repeatable` setting is forced on for sequential ones) and the pipeline's default, and with each
user's history items excluded, the convention of the published SASRec / HSTU anchors. RecBole's target ranks are
computed from its `full_sort_predict` scores with the same pessimistic ties as ours, and its own evaluator is run
beside them as a check. Precision is each side's default: RecBole's `enable_amp` is off (fp32); ours is `auto` (bf16
autocast where the CPU has native bf16, fp32 where it has not). Prints training targets/s, seconds per epoch, test
NDCG@10 / HR@10 at each checkpoint, and a most-popular baseline. NDCG@10 is bounded, so its ratio shrinks as both
models near convergence; "a good model sooner" is also printed as time to quality: RecBole's test targets are ranked
every `--curve` minutes of its training too, and for each NDCG@10 ours reached (and RecBole's best) the bench gives
when each side first reached it and how much sooner ours got there, at least.

    .venv/bin/python bench/vs_recbole.py --quick             # checkpoints 2 and 5 minutes, L=50 only
    .venv/bin/python bench/vs_recbole.py                     # 10, 25 and 60 minutes, L=50 and 200
    .venv/bin/python bench/vs_recbole.py --minutes 10,25 --lengths 50   # any subset
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from bench_args import comma_list, positive, provenance, run
from bfmscale.logging_setup import setup_logging

ROOT = Path(__file__).resolve().parent.parent
PEER = ROOT / "bench" / ".peer"
# pandas < 3: RecBole 1.2.1 fills missing values by chained in-place `fillna`, which pandas 3's copy-on-write turns into
# a no-op (with a ChainedAssignmentError warning); ML-1M has no missing values, but the peer should run as written.
PEER_DEPS = ["numpy<2", "scipy", "pandas<3", "scikit-learn", "colorlog", "colorama", "texttable", "psutil", "tabulate",
             "thop", "plotly", "tensorboard", "pyyaml", "tqdm"]

PEER_SCRIPT = textwrap.dedent('''
    import json, os, sys, tempfile, time
    import numpy as np
    import torch
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.model.sequential_recommender import SASRec
    from recbole.trainer import Trainer
    from recbole.utils import init_seed
    raw, max_len, checkpoints, threads = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3]), int(sys.argv[4])
    torch.set_num_threads(threads)
    cfg = {"data_path": raw, "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
           "USER_ID_FIELD": "user_id", "ITEM_ID_FIELD": "item_id", "TIME_FIELD": "timestamp",
           "MAX_ITEM_LIST_LENGTH": max_len, "train_neg_sample_args": None, "loss_type": "CE",
           "n_layers": 2, "n_heads": 2, "hidden_size": 64, "inner_size": 256, "hidden_dropout_prob": 0.2,
           "attn_dropout_prob": 0.2, "hidden_act": "gelu", "learning_rate": 1e-3,
           "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "mode": "full", "group_by": "user"},
           "metrics": ["Hit", "NDCG"], "topk": [10], "valid_metric": "NDCG@10", "device": "cpu", "use_gpu": False,
           "show_progress": False, "checkpoint_dir": tempfile.mkdtemp(), "seed": 0, "reproducibility": True,
           "worker": 0, "log_wandb": False}
    config = Config(model="SASRec", dataset="ml-1m", config_dict=cfg)
    init_seed(config["seed"], config["reproducibility"])
    dataset = create_dataset(config)
    train, valid, test = data_preparation(config, dataset)
    model = SASRec(config, train.dataset)
    trainer = Trainer(config, model)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    uid, iid = dataset.inter_feat["user_id"].numpy(), dataset.inter_feat["item_id"].numpy()
    order = np.argsort(uid, kind="stable")
    groups = np.split(order, np.flatnonzero(np.diff(uid[order])) + 1)
    items_of = {int(uid[g[0]]): torch.from_numpy(iid[g]) for g in groups}

    def target_ranks():
        # 1 + items scoring higher + the target's ties, as bfmscale.eval.ranking.pessimistic_ranks ranks; over every
        # item, then with the user's other items (its history: ML-1M has no repeats) set to -inf
        model.eval()
        ranks, users, targets = {"all": [], "excluded": []}, [], []
        with torch.no_grad():
            for inter, _, _, target in test:
                scores = model.full_sort_predict(inter).view(len(target), -1)
                scores[:, 0] = -float("inf")  # RecBole's padding id
                for key in ("all", "excluded"):
                    if key == "excluded":
                        for r, u in enumerate(inter["user_id"].tolist()):
                            scores[r, items_of[u][items_of[u] != target[r]]] = -float("inf")
                    t = scores.gather(1, target[:, None])
                    ranks[key] += ((scores > t).sum(1) + (scores == t).sum(1)).tolist()
                users += inter["user_id"].tolist()
                targets += target.tolist()
        return ranks, users, targets

    samples, clock, out, epoch_s = 0, 0.0, [], None
    pending = [tuple(c) for c in checkpoints]  # (minutes, whether it is an equal-time mark), in time order
    epochs = 0
    while pending:
        t_epoch = 0.0
        for batch in train:
            model.train()
            t = time.perf_counter()
            loss = model.calculate_loss(batch)
            opt.zero_grad(); loss.backward(); opt.step()
            dt = time.perf_counter() - t
            clock += dt; t_epoch += dt
            samples += len(batch)
            if clock >= 60 * pending[0][0]:
                due = []
                while pending and clock >= 60 * pending[0][0]:
                    due.append(pending.pop(0))
                ranks, users, targets = target_ranks()
                check = {}
                if any(c for _, c in due):  # RecBole's own evaluator, beside our ranks, at the equal-time marks
                    res = trainer.evaluate(test, load_best_model=False, show_progress=False)
                    check = {"recbole_ndcg@10": float(res["ndcg@10"]), "recbole_hr@10": float(res["hit@10"])}
                for m, c in due:
                    out.append({"minutes": m, "check": c, "ranks": ranks, "samples": samples, "train_s": clock,
                                **(check if c else {})})
                    print(json.dumps({k: v for k, v in out[-1].items() if k != "ranks"}), file=sys.stderr, flush=True)
                if not pending:
                    break
        else:
            epochs += 1
            epoch_s = t_epoch
    test_targets = dict(zip(dataset.id2token("user_id", users).tolist(), dataset.id2token("item_id", targets).tolist()))
    print(json.dumps({"checkpoints": out, "samples_per_s": samples / clock, "epoch_samples": len(train.dataset),
                      "epoch_s": epoch_s, "epochs": epochs, "test_targets": test_targets}))
''')


def peer_python() -> Path:
    """The throwaway venv with recbole 1.2.1 (no-deps) beside torch 2.13.0; (re)built when the dependency list changes."""
    py = PEER / "bin" / "python"
    marker = PEER / ".ok"
    wanted = json.dumps(PEER_DEPS)
    if not marker.is_file() or marker.read_text() != wanted:
        subprocess.run([sys.executable, "-m", "venv", str(PEER)], check=True)
        pip = [str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
        subprocess.run(pip + ["torch==2.13.0", *PEER_DEPS], check=True)
        subprocess.run(pip + ["--no-deps", "recbole==1.2.1"], check=True)
        marker.write_text(wanted)
    return py


def peer_data() -> Path:
    """Write the prepared events as RecBole's atomic file (our user and item codes as its tokens), in the prepared
    order: user, timestamp, source order.

    RecBole reads timestamps as float32 (64-second steps at ML-1M's epoch times) and its stable sort then keeps file
    order within a step; from the fetched file (ratings.dat's order) 1,191 of 6,040 test targets differed from ours.
    Float rounding is monotone, so a file already in time order gives RecBole exactly our leave-last-out split."""
    from bfmscale.atomic import atomic_path
    from bfmscale.data.dataset import load_prepared

    ds = load_prepared(ROOT / "data/prepared/ml-1m")
    inter = pd.DataFrame({"user_id:token": ds.events["user"], "item_id:token": ds.events["item"],
                          "timestamp:float": ds.events["timestamp"]})
    with atomic_path(PEER / "data" / "ml-1m" / "ml-1m.inter") as tmp:
        inter.to_csv(tmp, sep="\t", index=False)
    return PEER / "data"


def run_peer(data_path: Path, max_len: int, marks: list[tuple[float, bool]], threads: int) -> dict:
    """Train RecBole's SASRec through `marks` (minutes of its training clock, in order, each flagged when it is an
    equal-time mark, where RecBole's own evaluator also runs); its target ranks at every mark."""
    env = {**os.environ, "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}
    proc = subprocess.run([str(peer_python()), "-c", PEER_SCRIPT, str(data_path), str(max_len), json.dumps(marks),
                           str(threads)], stdout=subprocess.PIPE, text=True, env=env, cwd=PEER)
    if proc.returncode != 0:
        raise SystemExit(f"recbole run failed with exit code {proc.returncode} (its stderr is above)")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_ours(max_len: int, minutes: list[float], threads: int) -> dict:
    """One full schedule per checkpoint, each evaluated with history excluded and, reloaded, over every item."""
    from bfmscale.config import load_run_config
    from bfmscale.data.dataset import load_prepared
    from bfmscale.train.loop import train_run
    from sasrec import SASREC, checkpoint_test_metrics, flops_per_second

    ds = load_prepared(ROOT / "data/prepared/ml-1m")
    base = SASREC + [f"model.max_len={max_len}", "train.weight_decay=0.0", f"train.threads={threads}",
                     "data.exclude_seen=true", "train.save_checkpoint=true"]
    rate = flops_per_second(base, ds)
    out = []
    for m in minutes:
        cfg = load_run_config(None, base + [f"train.flops={rate * 60 * m:.6g}"])
        with tempfile.TemporaryDirectory() as tmp:
            res = train_run(cfg, ds, out_dir=tmp)
            every = checkpoint_test_metrics(cfg, ds, Path(tmp) / "model.pt", exclude_seen=False)
        rate = res.info["flops_per_s"]  # the next schedule is sized from this run's rate, a longer probe than the first
        out.append({"minutes": m, "excluded": {k: res.metrics[f"test_{k}"] for k in ("ndcg@10", "hr@10")},
                    "all": {k: every[k] for k in ("ndcg@10", "hr@10")},
                    "tokens_per_s": res.info["tokens_per_s"], "train_s": res.info["train_time"],
                    "epochs": res.info["epochs"]})
    # each user's test target, in peer_data's tokens
    targets = {str(u): str(items[-1]) for u, items in zip(ds.sequences["user"], ds.sequences["items"])}
    return {"checkpoints": out, "targets_per_s": float(np.mean([c["tokens_per_s"] for c in out])),
            "epoch_s": float(np.mean([c["train_s"] / c["epochs"] for c in out])), "test_targets": targets}


def peer_metrics(peer: dict) -> None:
    """Turn each peer checkpoint's target ranks into HR@10 / NDCG@10 with our `ranking_metrics`, per convention."""
    from bfmscale.eval.ranking import ranking_metrics

    for c in peer["checkpoints"]:
        for key, ranks in c.pop("ranks").items():
            m = ranking_metrics(np.asarray(ranks), ks=(10,))
            c[key] = {"ndcg@10": m["ndcg@10"], "hr@10": m["hr@10"]}


def equal_time_marks(checkpoints: list[dict]) -> list[float]:
    """The minutes at which the peer is evaluated: the training time ours actually took at each checkpoint."""
    # the peer trains on through its marks in order; a longer budget cannot train shorter unless the box stalls
    return [float(m) for m in np.maximum.accumulate([c["train_s"] / 60 for c in checkpoints])]


def peer_marks(equal_time: list[float], every: float) -> list[tuple[float, bool]]:
    """The equal-time marks (flagged True) and a learning-curve mark every `every` minutes before the last of them."""
    n = int(np.ceil(max(equal_time) / every))
    curve = [every * k for k in range(1, n)]
    return sorted([(m, True) for m in equal_time] + [(m, False) for m in curve])


def distinct_points(marks: list[dict]) -> list[dict]:
    """The peer's learning curve: its marks in time order, one per evaluation (marks that fell due after the same
    batch share one)."""
    return [c for i, c in enumerate(marks) if i == 0 or c["train_s"] != marks[i - 1]["train_s"]]


def first_reached(points: list[tuple[float, float]], quality: float) -> tuple[float, float | None]:
    """When a run, seen at (training seconds, NDCG@10) points in time order, first reached `quality`: the bracket
    (last point before, first point at or above), or (last point, None) when it never did."""
    before = 0.0
    for t, q in points:
        if q >= quality:
            return before, t
        before = t
    return before, None


def time_to_quality(ours: list[dict], curve: list[dict], convention: str) -> list[str]:
    """For each NDCG@10 ours reached at a checkpoint, and for RecBole's best on its curve (the model early stopping
    would keep; its curve is not monotone): how long each side trained to reach it and how much sooner ours got
    there, at least (RecBole's earliest possible time over ours' latest)."""
    ours_pts = [(c["train_s"], c[convention]["ndcg@10"]) for c in ours]
    peer_pts = [(c["train_s"], c[convention]["ndcg@10"]) for c in curve]
    targets = [(q, f"ours after {t:,.0f} s") for t, q in ours_pts]
    best_t, best_q = max(peer_pts, key=lambda p: (p[1], -p[0]))  # the first time it reached its best
    targets.append((best_q, f"RecBole's best, after {best_t:,.0f} s"))
    lines = []
    for q, where in targets:
        o_lo, o_hi = first_reached(ours_pts, q)
        p_lo, p_hi = first_reached(peer_pts, q)
        peer = f"{p_lo:,.0f}-{p_hi:,.0f} s" if p_hi is not None else f"not within its {p_lo:,.0f} s"
        ours_s = f"<= {o_hi:,.0f} s" if o_hi is not None else f"not within {o_lo:,.0f} s"
        sooner = f">= {p_lo / o_hi:.1f}x sooner" if o_hi is not None and p_lo > 0 else "no bound"
        lines.append(f"NDCG@10 {q:.4f} ({where}): ours {ours_s}, RecBole {peer}: {sooner}")
    return lines


def most_popular(exclude_seen: bool) -> dict[str, float]:
    """Rank items by training popularity for every user; test HR@10 / NDCG@10 with our evaluation."""
    from bfmscale.config import ModelConfig
    from bfmscale.data.dataset import load_prepared
    from bfmscale.eval.ranking import mask_seen, pessimistic_ranks, ranking_metrics
    from bfmscale.model.catalog import build_catalog
    from bfmscale.train.data import build_sequences

    ds = load_prepared(ROOT / "data/prepared/ml-1m")
    seqs = build_sequences(ds)
    pop = build_catalog(ds, ModelConfig().text_buckets).popularity[1:].float()  # training-event counts
    ends = seqs.offsets[1:] - 1  # each user's test target
    targets = seqs.items[torch.from_numpy(ends)]
    scores = pop.repeat(seqs.n_users, 1)
    if exclude_seen:
        scores = mask_seen(scores, seqs, np.arange(seqs.n_users), ends, targets)
    m = ranking_metrics(pessimistic_ranks(scores, targets - 1).numpy(), ks=(10,))
    return {"ndcg@10": m["ndcg@10"], "hr@10": m["hr@10"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="checkpoints 2 and 5 minutes, max length 50 only")
    ap.add_argument("--threads", type=positive(int), default=torch.get_num_threads())
    ap.add_argument("--minutes", type=comma_list(float), default=None,
                    help="comma list of wall-clock checkpoints (default 10,25,60)")
    ap.add_argument("--lengths", type=comma_list(int), default=None, help="comma list of max lengths (default 50,200)")
    ap.add_argument("--curve", type=positive(float), default=None,
                    help="RecBole's learning curve: also rank its test targets every this many training minutes "
                         "(default 5; 1 with --quick), for the time each side takes to reach a quality")
    args = ap.parse_args()
    print(provenance(), flush=True)
    setup_logging()  # our training runs report progress at INFO, as RecBole's checkpoints do on stderr
    # checkpoints in order: the peer trains on through them
    minutes = sorted(args.minutes or ([2.0, 5.0] if args.quick else [10.0, 25.0, 60.0]))
    lengths = args.lengths or ([50] if args.quick else [50, 200])
    peer_raw = peer_data()
    rows = []
    for L in lengths:
        ours = run_ours(L, minutes, args.threads)
        marks = peer_marks(equal_time_marks(ours["checkpoints"]), args.curve or (1.0 if args.quick else 5.0))
        peer = run_peer(peer_raw, L, marks, args.threads)
        rows.append((L, peer, ours))
    for L, peer, ours in rows:
        peer_metrics(peer)
        marks = peer.pop("checkpoints")
        peer["checkpoints"] = [c for c in marks if c["check"]]  # the equal-time ones are compared
        peer["curve"] = distinct_points(marks)
        same = sum(ours["test_targets"].get(u) == t for u, t in peer["test_targets"].items())
        print(f"\nL={L}: RecBole's and our leave-last-out test targets agree for {same:,} of "
              f"{len(peer['test_targets']):,} users")
        print(f"L={L}: RecBole's own evaluator, every item ranked: " + ", ".join(
            f"NDCG@10 {c['recbole_ndcg@10']:.4f} / HR@10 {c['recbole_hr@10']:.4f} (from its scores here: "
            f"{c['all']['ndcg@10']:.4f} / {c['all']['hr@10']:.4f})" for c in peer["checkpoints"]))
    for convention, title in (("all", "every item ranked: RecBole's evaluator for sequential models and the "
                                      "pipeline's default"),
                              ("excluded", "each user's history items excluded: the published anchors' convention")):
        pop = most_popular(convention == "excluded")
        print(f"\nML-1M leave-last-out, {args.threads} threads, {title}\n"
              f"most-popular baseline: test NDCG@10 {pop['ndcg@10']:.4f}, HR@10 {pop['hr@10']:.4f}")
        print(f"{'L':>4} {'system':<16} {'targets/s':>10} {'s/epoch':>9} " +
              " ".join(f"{f'NDCG@10 {m:g}m':>13} {'HR@10':>6}" for m in minutes))
        for L, peer, ours in rows:
            p_epoch = peer["epoch_s"] if peer["epoch_s"] else peer["epoch_samples"] / peer["samples_per_s"]
            for name, tps, ep, cps in (("RecBole SASRec", peer["samples_per_s"], p_epoch, peer["checkpoints"]),
                                       ("bfmscale id", ours["targets_per_s"], ours["epoch_s"], ours["checkpoints"])):
                cells = " ".join(f"{c[convention]['ndcg@10']:>13.4f} {c[convention]['hr@10']:>6.4f}" for c in cps)
                print(f"{L:>4} {name:<16} {tps:>10,.0f} {ep:>9,.0f} {cells}")
            print(f"{L:>4} {'ratio ours/peer':<16} {ours['targets_per_s'] / peer['samples_per_s']:>10.1f}x " +
                  " ".join(f"{o[convention]['ndcg@10'] / max(p[convention]['ndcg@10'], 1e-9):>12.1f}x {'':>6}"
                           for o, p in zip(ours["checkpoints"], peer["checkpoints"])))
            print(f"{L:>4} {'train s, peer/ours':<27} " +  # equal up to the peer's last batch
                  " ".join(f"{p['train_s']:>6,.0f}/{o['train_s']:<6,.0f}"
                           for o, p in zip(ours["checkpoints"], peer["checkpoints"])))
        for L, peer, ours in rows:
            print(f"L={L}, RecBole's NDCG@10 by training seconds: " +
                  ", ".join(f"{c['train_s']:,.0f} {c[convention]['ndcg@10']:.4f}" for c in peer["curve"]))
            print(f"L={L}, training time to reach an NDCG@10:")
            for line in time_to_quality(ours["checkpoints"], peer["curve"], convention):
                print(f"  {line}")


if __name__ == "__main__":
    run(main)
