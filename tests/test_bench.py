"""The benches keep running: bench/train_throughput.py's whole grid, bench/envelope.py's sweep and
bench/sampled_ce_routes.py's table on tiny synthetic data, and the script bench/vs_recbole.py hands to the peer's
interpreter parses. Figures are not checked here (benches are not tests)."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from synthetic import make_prepared

BENCH = Path(__file__).resolve().parent.parent / "bench"


@pytest.fixture
def bench_modules(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(BENCH))


ROW = re.compile(r"^\s*(\d+)\s+(\d)\s+(\d+)\s+(\w+)\s+(id|features)\s+(fp32|bf16)\s+([\d,]+)\s+([\d.]+)\s+([\d.]+)%\s+([\d.]+)%"
                 r"\s+(\d+)\s+(-|[\d.]+x)$")


def test_train_throughput_prints_every_configuration(tmp_path, monkeypatch, capsys, bench_modules):
    import train_throughput

    ds = make_prepared(tmp_path, n_users=6, n_items=40, min_len=205, max_len=230)  # full T=200 windows exist
    monkeypatch.setattr(sys, "argv", ["train_throughput.py", "--prepared", str(ds.path), "--d-models", "16",
                                      "--steps", "1", "--batch-size", "2", "--precisions", "fp32", "--peak-n", "256"])
    train_throughput.main()
    out = capsys.readouterr().out
    assert "failed" not in out
    assert out.startswith("# ") and "train_throughput.py --prepared" in out.splitlines()[0]  # the provenance lines
    assert re.search(r"^eval: 6 users ranked over 40 items", out, re.M)
    rows = [m.groups() for m in map(ROW.match, out.splitlines()) if m]
    expected = {(l, t, obj, emb) for l in ("2", "4") for t in ("50", "200")
                for obj in train_throughput.OBJECTIVES for emb in ("id", "features")}
    assert {(r[1], r[2], r[3], r[4]) for r in rows} == expected and len(rows) == len(expected)
    for r in rows:
        assert float(r[6].replace(",", "")) > 0, r  # tokens/s
        assert int(r[10]) > 0, r  # the matmul peak measured for this row (GFLOP/s), MFU's denominator
        if r[3] == "full" and r[4] == "id":  # the full softmax executes the FLOPs the study charges (MFU = HFU)
            assert math.isclose(float(r[8]), float(r[9]), abs_tol=0.15), r  # printed to 0.1 points
        assert r[11] == "-", r  # no bf16/fp32 ratio without bf16
    assert re.search(r"^matmul peak \(256\^3\) at the end: fp32 [\d.]+ GFLOP/s$", out, re.M)


def test_train_throughput_rounds_keep_the_fastest_and_print_the_ratio(tmp_path, monkeypatch, capsys, bench_modules):
    """With --rounds 3 each configuration is timed three times; its rows keep each precision's fastest round, and
    the bf16 row prints its tokens/s over the fp32 row's."""
    import train_throughput

    ds = make_prepared(tmp_path, n_users=6, n_items=40, min_len=205, max_len=230)
    calls, real = [], train_throughput.bench_precisions
    speeds = iter([100.0, 150.0, 300.0, 200.0, 120.0, 250.0] * 3)  # fp32, bf16 per round, 3 rounds per config

    def fake_bench(*args, **kwargs):
        calls.append(list(args[6]))  # the precisions timed together
        timings, errors = real(*args, **kwargs)
        return {p: t._replace(tokens_per_s=next(speeds)) for p, t in timings.items()}, errors

    monkeypatch.setattr(train_throughput, "cpu_has_native_bf16", lambda: True)  # bf16 runs anywhere, slowly
    monkeypatch.setattr(train_throughput, "bench_precisions", fake_bench)
    monkeypatch.setattr(sys, "argv", ["train_throughput.py", "--prepared", str(ds.path), "--d-models", "16", "--quick",
                                      "--steps", "1", "--batch-size", "2", "--peak-n", "64", "--rounds", "3"])
    train_throughput.main()
    rows = [m.groups() for m in map(ROW.match, capsys.readouterr().out.splitlines()) if m]
    assert len(rows) == 6 and calls == [["fp32", "bf16"]] * 9  # 3 configurations x 3 rounds, both precisions each
    fp32, bf16 = [r for r in rows if r[5] == "fp32"], [r for r in rows if r[5] == "bf16"]
    assert [r[6] for r in fp32] == ["300", "300", "300"] and [r[6] for r in bf16] == ["250", "250", "250"]
    assert all(r[11] == "-" for r in fp32) and all(r[11] == "0.83x" for r in bf16)


def test_bench_precisions_steps_them_in_turn_and_goes_on_past_a_failure(tmp_path, monkeypatch, bench_modules):
    """A configuration's precisions take their steps in turn (2 warm-up + `steps` each, taking the data's 3 batches
    in turn again); one that raises a RuntimeError is reported in one line and dropped while the others finish; data
    without a full batch of full-length windows is refused in one line."""
    import train_throughput
    from bfmscale.data.dataset import load_prepared
    from bfmscale.model.catalog import build_catalog
    from bfmscale.train.data import build_sequences

    ds = load_prepared(make_prepared(tmp_path, n_users=6, n_items=40, min_len=60, max_len=80).path)
    seqs = build_sequences(ds)
    catalog = build_catalog(ds, 64)
    mc = train_throughput.ModelConfig(d_model=16, n_layers=1, n_heads=1, d_ff=32, max_len=50)
    tc = train_throughput.TrainConfig()
    order, real_step = [], train_throughput.ConfigRun.step

    def step(run):
        order.append((run.amp, run.done))
        if run.amp == "boom" and run.done == 3:
            raise RuntimeError("out of memory\nsecond line")
        real_step(run)

    monkeypatch.setattr(train_throughput.ConfigRun, "step", step)
    monkeypatch.setattr(train_throughput, "train_step",  # "boom" stands for a precision that fails mid-way
                        lambda model, obj, opt, items, feats, amp, clip: None)
    amps = {"fp32": None, "boom": "boom"}
    timings, errors = train_throughput.bench_precisions(ds, seqs, catalog, mc, tc, torch.device("cpu"), amps,
                                                        batch_size=2, steps=3)
    assert order[:8] == [(None, 0), ("boom", 0), (None, 1), ("boom", 1), (None, 2), ("boom", 2), (None, 3),
                         ("boom", 3)]
    assert order[8:] == [(None, 4)]  # after its failure only fp32 steps on
    assert errors == {"boom": "RuntimeError: out of memory"} and list(timings) == ["fp32"]
    assert timings["fp32"].tokens_per_s > 0 and timings["fp32"].warmup_s > 0
    with pytest.raises(train_throughput.BfmError, match=r"^--batch-size: no 8 full-length windows of T=50 in the"):
        train_throughput.ConfigRun(ds, seqs, catalog, mc, tc, torch.device("cpu"), None, batch_size=8, steps=1)


@pytest.mark.parametrize("flag, value, expected", [
    ("--rounds", "0", "argument --rounds: '0': expected a positive integer"),
    ("--d-models", "64,12x8", "argument --d-models: '12x8': expected a positive integer"),
    ("--precisions", "fp32,fp16", "argument --precisions: 'fp16': expected one of fp32, bf16"),
])
def test_train_throughput_refuses_bad_arguments_before_any_work(tmp_path, monkeypatch, capsys, bench_modules, flag,
                                                               value, expected):
    import train_throughput

    monkeypatch.setattr(train_throughput, "load_prepared", lambda path: pytest.fail("ran past a bad argument"))
    monkeypatch.setattr(sys, "argv", ["train_throughput.py", flag, value])
    with pytest.raises(SystemExit) as exc:
        train_throughput.main()
    assert exc.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"train_throughput.py: error: {expected}"


def test_bench_args_parse_lists_and_name_what_was_expected(bench_modules):
    import argparse

    from bench_args import comma_list, positive

    assert comma_list(int)("64,128") == [64, 128]
    assert comma_list(float)("1e11, 3e12") == [1e11, 3e12]
    assert comma_list(str, ("fp32", "bf16"))("bf16,fp32") == ["bf16", "fp32"]
    assert positive(float)("0.5") == 0.5
    refused = [(comma_list(int), "", "expected a comma list without empty items"),
               (comma_list(int), "64,", "expected a comma list without empty items"),
               (comma_list(int), "2.5", "'2.5': expected a positive integer"),
               (comma_list(int), "-1", "'-1': expected a positive integer"),
               (comma_list(float), "1e", "'1e': expected a positive number"),
               (positive(float), "nan", "'nan': expected a positive number"),
               (positive(int), "0", "'0': expected a positive integer"),
               (comma_list(str, ("id", "features")), "id,idd", "'idd': expected one of id, features")]
    for parse, text, message in refused:
        with pytest.raises(argparse.ArgumentTypeError, match=re.escape(message)):
            parse(text)


def test_bench_commit_names_the_checkout_and_marks_uncommitted_changes(tmp_path, bench_modules):
    from bench_args import commit

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@example.com",
                               *args], capture_output=True, text=True, check=True).stdout.strip()

    assert commit(tmp_path) == "unknown"  # not a git checkout
    git("init", "-q")
    (tmp_path / "a.txt").write_text("1")
    git("add", "a.txt")
    git("commit", "-q", "-m", "one")
    head = git("rev-parse", "--short", "HEAD")
    (tmp_path / "untracked.txt").write_text("x")  # untracked files are not the code that ran
    assert commit(tmp_path) == head
    (tmp_path / "a.txt").write_text("2")
    assert commit(tmp_path) == f"{head} + uncommitted changes"


def test_bench_provenance_says_when_where_and_by_which_command(monkeypatch, bench_modules):
    import bench_args

    monkeypatch.setattr(sys, "argv", ["bench/x.py", "--rounds", "3", "a b"])
    monkeypatch.setattr(bench_args, "commit", lambda: "abc1234")
    first, second = bench_args.provenance().splitlines()
    assert re.fullmatch(r"# \d{4}-\d\d-\d\d \d\d:\d\d UTC, bfmscale at abc1234: \S*python\S* bench/x.py --rounds 3 'a b'",
                        first), first
    assert second == "# " + bench_args.describe_machine(torch.device("cpu"))


def test_bench_run_ends_a_package_error_in_one_line(tmp_path, monkeypatch, bench_modules):
    import train_throughput
    from bench_args import run

    missing = tmp_path / "nowhere"
    monkeypatch.setattr(sys, "argv", ["train_throughput.py", "--prepared", str(missing)])
    with pytest.raises(SystemExit) as exc:
        run(train_throughput.main)
    message = str(exc.value.code)
    assert message.startswith(f"train_throughput.py: error: {missing / 'events.parquet'}: not found")
    assert "\n" not in message


def test_train_throughput_refuses_bf16_without_native_support(tmp_path, monkeypatch, bench_modules):
    import train_throughput

    ds = make_prepared(tmp_path, n_users=6, n_items=40, min_len=6, max_len=12)
    monkeypatch.setattr(train_throughput, "cpu_has_native_bf16", lambda: False)
    monkeypatch.setattr(sys, "argv", ["train_throughput.py", "--prepared", str(ds.path), "--precisions", "bf16"])
    with pytest.raises(SystemExit, match="no native bf16"):
        train_throughput.main()


def test_vs_recbole_peer_script_parses(bench_modules):
    import vs_recbole

    compile(vs_recbole.PEER_SCRIPT, "<peer>", "exec")  # a SyntaxError here would only show after the peer's install


def test_vs_recbole_evaluates_the_peer_at_the_time_ours_actually_trained(monkeypatch, capsys, bench_modules):
    import vs_recbole

    calls = []

    def fake_ours(max_len, minutes, threads):  # budgets sized from a probe: here both overrun their checkpoint
        ndcg = {2.0: (0.1, 0.3), 5.0: (0.6, 0.9)}  # every item, history excluded
        cps = [{"minutes": m, "all": {"ndcg@10": ndcg[m][0], "hr@10": 0.2},
                "excluded": {"ndcg@10": ndcg[m][1], "hr@10": 0.4}, "train_s": 66.0 * m} for m in minutes]
        return {"checkpoints": cps, "targets_per_s": 1000.0, "epoch_s": 10.0, "test_targets": {"1": "5", "2": "8"}}

    def fake_peer(raw, max_len, marks, threads):
        calls.append((max_len, marks))
        # target ranks at the equal-time marks: over every item 1 and 20, with history excluded 1 and 2; on the
        # curve, after 2 minutes both 20 (NDCG@10 0), after 4 minutes the best (1 and 1: NDCG@10 1)
        curve = {2.0: {"all": [20, 20], "excluded": [20, 20]}, 4.0: {"all": [1, 1], "excluded": [1, 2]}}
        cps = [{"minutes": m, "check": check, "ranks": {"all": [1, 20], "excluded": [1, 2]} if check else curve[m],
                "train_s": 60.0 * m, **({"recbole_ndcg@10": 0.5, "recbole_hr@10": 0.5} if check else {})}
               for m, check in marks]
        return {"checkpoints": cps, "samples_per_s": 10.0, "epoch_s": 100.0, "epoch_samples": 1000,
                "test_targets": {"1": "5", "2": "7"}}

    monkeypatch.setattr(vs_recbole, "run_ours", fake_ours)
    monkeypatch.setattr(vs_recbole, "run_peer", fake_peer)
    monkeypatch.setattr(vs_recbole, "peer_data", lambda: Path("unused"))
    monkeypatch.setattr(vs_recbole, "most_popular", lambda exclude_seen: {"ndcg@10": 0.01, "hr@10": 0.02})
    monkeypatch.setattr(sys, "argv", ["vs_recbole.py", "--minutes", "5,2", "--lengths", "50", "--curve", "2"])
    vs_recbole.main()
    # ours' 132 s and 330 s, in minutes, in order, with the curve's marks every 2 minutes before the last
    assert calls == [(50, [(2.0, False), (2.2, True), (4.0, False), (5.5, True)])]
    out = capsys.readouterr().out
    times = [line for line in out.splitlines() if "train s, peer/ours" in line]
    assert len(times) == 2 and times[0].split()[-2:] == ["132/132", "330/330"]
    assert "test targets agree for 1 of 2 users" in out
    peer_rows = [line.split() for line in out.splitlines() if "RecBole SASRec" in line]
    # every item: NDCG@10 (1 + 0) / 2, HR@10 1/2; history excluded: (1 + 1/log2(3)) / 2 = 0.8155, HR@10 1
    assert [r[-4:] for r in peer_rows] == [["0.5000", "0.5000"] * 2, ["0.8155", "1.0000"] * 2]
    ratios = [line.split() for line in out.splitlines() if "ratio ours/peer" in line]
    assert [r[-2:] for r in ratios] == [["0.2x", "1.2x"], ["0.4x", "1.1x"]]  # 0.1 / 0.5, 0.6 / 0.5, 0.3 / 0.8155, ...
    curves = [line for line in out.splitlines() if "NDCG@10 by training seconds" in line]
    assert curves == ["L=50, RecBole's NDCG@10 by training seconds: 120 0.0000, 132 0.5000, 240 1.0000, 330 0.5000",
                      "L=50, RecBole's NDCG@10 by training seconds: 120 0.0000, 132 0.8155, 240 0.8155, 330 0.8155"]
    reach = [line.strip() for line in out.splitlines() if line.startswith("  NDCG@10")]
    assert reach == [
        # every item: RecBole first reached 0.1 between 120 and 132 s, ours by 132 s
        "NDCG@10 0.1000 (ours after 132 s): ours <= 132 s, RecBole 120-132 s: >= 0.9x sooner",
        "NDCG@10 0.6000 (ours after 330 s): ours <= 330 s, RecBole 132-240 s: >= 0.4x sooner",
        # RecBole's best (1.0 at 240 s, not its last 0.5), which ours never reached
        "NDCG@10 1.0000 (RecBole's best, after 240 s): ours not within 330 s, RecBole 132-240 s: no bound",
        # history excluded: RecBole never reached 0.9 in its 330 s
        "NDCG@10 0.3000 (ours after 132 s): ours <= 132 s, RecBole 120-132 s: >= 0.9x sooner",
        "NDCG@10 0.9000 (ours after 330 s): ours <= 330 s, RecBole not within its 330 s: >= 1.0x sooner",
        "NDCG@10 0.8155 (RecBole's best, after 132 s): ours <= 330 s, RecBole 120-132 s: >= 0.4x sooner",
    ]
    assert vs_recbole.equal_time_marks([{"train_s": 120.0}, {"train_s": 90.0}]) == [2.0, 2.0]  # never back in time


def test_vs_recbole_time_to_quality_brackets_first_reach(bench_modules):
    import vs_recbole

    pts = [(60.0, 0.1), (120.0, 0.3), (180.0, 0.2)]
    assert vs_recbole.first_reached(pts, 0.05) == (0.0, 60.0)  # at the first point: no lower bound but 0
    assert vs_recbole.first_reached(pts, 0.25) == (60.0, 120.0)
    assert vs_recbole.first_reached(pts, 0.4) == (180.0, None)  # never
    same_batch = [{"train_s": 121.0, "check": False}, {"train_s": 121.0, "check": True}, {"train_s": 182.0}]
    assert [c["train_s"] for c in vs_recbole.distinct_points(same_batch)] == [121.0, 182.0]
    lines = vs_recbole.time_to_quality([{"train_s": 30.0, "all": {"ndcg@10": 0.05}}],
                                       [{"train_s": t, "all": {"ndcg@10": q}} for t, q in pts], "all")
    assert lines[0] == "NDCG@10 0.0500 (ours after 30 s): ours <= 30 s, RecBole 0-60 s: no bound"
    # RecBole's target is its best point (0.3 at 120 s), not its last (0.2 at 180 s)
    assert lines[1] == "NDCG@10 0.3000 (RecBole's best, after 120 s): ours not within 30 s, RecBole 60-120 s: no bound"
    tie = [{"train_s": t, "all": {"ndcg@10": q}} for t, q in [(60.0, 0.1), (120.0, 0.3), (180.0, 0.3)]]
    ours = [{"train_s": 20.0, "all": {"ndcg@10": 0.35}}]
    assert vs_recbole.time_to_quality(ours, tie, "all")[1] == (
        "NDCG@10 0.3000 (RecBole's best, after 120 s): ours <= 20 s, RecBole 60-120 s: >= 3.0x sooner")


def test_envelope_times_an_isoflop_sweep_and_sizes_the_envelope(tmp_path, monkeypatch, capsys, bench_modules):
    import envelope

    ds = make_prepared(tmp_path, n_users=8, n_items=40)
    monkeypatch.setattr(sys, "argv", ["envelope.py", "--prepared", str(ds.path.parent), "--dataset", ds.path.name,
                                      "--budgets", "1e6,1e7", "--n-models", "2", "--workers", "1",
                                      "--n-evals", "1", "--eval-users", "4", "--hours", "0.5"])
    envelope.main()
    out = capsys.readouterr().out
    assert "train overrides {'n_evals': 1, 'eval_users': 4}" in out
    n_runs = len(envelope.expand(envelope.design([1e6, 1e7], 2, ds.path.name, str(ds.path.parent))))
    run_rows = re.findall(r"^\s*(1e\+0[67])\s+(\d+)\s+(\d+)\s+\d+\s+(\d+)\s.*\s(fp32|bf16)\s+[\d.e+-]+$", out, re.M)
    assert len(run_rows) == n_runs and {r[0] for r in run_rows} == {"1e+06", "1e+07"}
    assert all(int(r[3]) >= 1 for r in run_rows)  # steps
    budget_rows = re.findall(r"^\s*(1e\+0[67])\s+(\d+)\s+([\d.]+)\s+([\d.]+)\s+(\d+)$", out, re.M)
    assert [r[0] for r in budget_rows] == ["1e+06", "1e+07"]
    assert sum(int(r[1]) for r in budget_rows) == n_runs
    for _, runs, mean_wall, share, in_envelope in budget_rows:
        assert 0 < float(share) <= 1
        expected = 1800 / float(mean_wall)  # one worker, half an hour; the mean is printed to 4 digits
        assert abs(int(in_envelope) - expected) <= 1 + 1e-3 * expected
    assert re.search(rf"^sweep wall \d+ s for \d+ run-seconds \({n_runs} runs, 0 already in the store\)", out, re.M)


def test_envelope_budget_table_counts_runs_per_worker_hours(bench_modules):
    import pandas as pd
    from envelope import budget_table

    runs = pd.DataFrame({"budget": [1e11, 1e11, 1e12], "wall_s": [10.0, 30.0, 100.0], "train_s": [5.0, 15.0, 80.0]})
    table = budget_table(runs, workers=2, envelope_s=3600.0).set_index("budget")
    assert table.loc[1e11, "runs"] == 2 and table.loc[1e11, "mean_wall_s"] == 20.0
    assert table.loc[1e11, "train_share"] == 0.5 and table.loc[1e12, "train_share"] == 0.8
    assert table.loc[1e11, "runs_in_envelope"] == 360 and table.loc[1e12, "runs_in_envelope"] == 72


@pytest.mark.parametrize("workers", ["1", "2"])  # in-process (the load fails in the sweep) or a pool (a run fails)
def test_envelope_says_why_its_runs_failed(tmp_path, monkeypatch, bench_modules, workers):
    import envelope
    from bench_args import run

    monkeypatch.setattr(sys, "argv", ["envelope.py", "--prepared", str(tmp_path), "--budgets", "1e6", "--n-models",
                                      "1", "--workers", workers])
    with pytest.raises(SystemExit) as exc:
        run(envelope.main)
    message = str(exc.value.code)
    assert message.startswith("envelope.py: error: ") and "\n" not in message
    assert f"{tmp_path / 'ml-1m' / 'events.parquet'}: not found" in message


SAMPLED_ROW = re.compile(r"^\s*200\s+[\d.]+\s+(\d+)\s+(\d+)\s+(frozen|trainable)\s+(fp32|bf16)"  # I, I/(K+1), d, K, ...
                         r"\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)x\s+(gather|matmul|bag)$")


def test_sampled_ce_routes_times_every_route_and_names_the_default(monkeypatch, capsys, bench_modules):
    import sampled_ce_routes

    # I = 200: K=4 is past fp32's dense limit (200 > 32·5), so gather, but within bf16's (200 <= 64·5); dense
    # routes take the bag (200 >= 10·17)
    monkeypatch.setattr(sys, "argv", ["sampled_ce_routes.py", "--device", "cpu", "--targets", "24", "--items", "200",
                                      "--d-models", "8", "--negatives", "4,16", "--rounds", "1"])
    sampled_ce_routes.main()
    rows = [m.groups() for m in map(SAMPLED_ROW.match, capsys.readouterr().out.splitlines()) if m]
    assert {(r[1], r[2], r[3]) for r in rows} == {(k, t, p) for k in ("4", "16") for t in ("frozen", "trainable")
                                                  for p in ("fp32", "bf16")} and len(rows) == 8
    assert {(r[1], r[3]): r[8] for r in rows} == {("4", "fp32"): "gather", ("4", "bf16"): "bag", ("16", "fp32"): "bag",
                                                  ("16", "bf16"): "bag"}
    assert all(float(r[i]) > 0 for r in rows for i in (4, 5, 6)), rows


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal where no GPU is")
def test_sampled_ce_routes_refuses_cuda_without_a_gpu(monkeypatch, capsys, bench_modules):
    import sampled_ce_routes

    monkeypatch.setattr(sys, "argv", ["sampled_ce_routes.py", "--device", "cuda"])
    with pytest.raises(SystemExit) as exc:
        sampled_ce_routes.main()
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("sampled_ce_routes.py: error: argument --device: 'cuda': no CUDA device")


CEILING_ROW = re.compile(r"^\s*16\s+50\s+(\w+)\s+(id|features)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)x\s+(\d+)%\s+([\d.]+)x"
                         r"\s+([\d.]+)x\s+([\d.]+)x  (.*)$")


def test_bf16_ceiling_prints_a_row_per_configuration(tmp_path, monkeypatch, capsys, bench_modules):
    import bf16_ceiling
    import train_throughput

    ds = make_prepared(tmp_path, n_users=6, n_items=40, min_len=60, max_len=80)
    monkeypatch.setattr(bf16_ceiling, "cpu_has_native_bf16", lambda: True)  # bf16 runs anywhere, slowly
    monkeypatch.setattr(sys, "argv", ["bf16_ceiling.py", "--prepared", str(ds.path), "--d-models", "16", "--lengths",
                                      "50", "--steps", "1", "--batch-size", "2", "--peak-n", "64"])
    bf16_ceiling.main()
    out = capsys.readouterr().out
    assert re.search(r"^L=2, .* matmul peak \(64\^3\): fp32 [\d.]+, bf16 [\d.]+ GFLOP/s", out, re.M)
    rows = [m.groups() for m in map(CEILING_ROW.match, out.splitlines()) if m]
    assert {(r[0], r[1]) for r in rows} == {(o, e) for o in train_throughput.OBJECTIVES for e in ("id", "features")}
    for r in rows:
        assert float(r[2]) > 0 and float(r[3]) > 0 and 0 < int(r[5]) <= 100, r
        assert all(op.split()[0] not in {"mm", "addmm", "bmm", "baddbmm"} for op in r[9].split(", ") if op), r


def test_bf16_ceiling_refuses_a_cpu_without_native_bf16(monkeypatch, bench_modules):
    import bf16_ceiling

    monkeypatch.setattr(bf16_ceiling, "cpu_has_native_bf16", lambda: False)
    monkeypatch.setattr(bf16_ceiling, "load_prepared", lambda path: pytest.fail("ran on without native bf16"))
    monkeypatch.setattr(sys, "argv", ["bf16_ceiling.py"])
    with pytest.raises(SystemExit, match="no native bf16"):
        bf16_ceiling.main()


def test_bf16_ceiling_splits_matrix_products_from_the_rest(bench_modules):
    """The profile's matrix-product kernels are counted apart; the ratio they allow is Amdahl's; the ops bf16 adds
    most come from outside the products, largest first."""
    from collections import Counter

    from torch.profiler import ProfilerActivity, profile

    from bf16_ceiling import added_ops, amdahl_ratio, matmul_seconds, self_times

    a = torch.randn(256, 256)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        torch.relu(a @ a)
    times = self_times(prof)
    assert times["aten::mm"] > 0 and times["aten::relu"] + times["aten::clamp_min"] > 0
    assert matmul_seconds(times) == times["aten::mm"] + times["aten::addmm"]
    assert amdahl_ratio(100.0, 60.0, 20.0) == 100.0 / 60.0  # 40 outside the products, which shrink from 60 to 20
    assert amdahl_ratio(100.0, 0.0, 0.0) == 1.0
    t32 = Counter({"aten::mm": 5.0, "aten::copy_": 1.0, "aten::add": 2.0})
    t16 = Counter({"aten::mm": 9.0, "aten::copy_": 4.0, "aten::add": 1.0, "aten::_to_copy": 0.5})
    assert added_ops(t32, t16, 3) == [("aten::copy_", 3.0), ("aten::_to_copy", 0.5)]
    assert added_ops(t32, t16, 1) == [("aten::copy_", 3.0)]
