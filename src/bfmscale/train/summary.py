"""One-screen summary of a finished run."""

from __future__ import annotations

from bfmscale.train.loop import RunResult


def format_summary(res: RunResult) -> str:
    """Params per part, FLOPs, time, throughput and the headline metrics, in a dozen lines."""
    i, m = res.info, res.metrics
    p = i["params"]
    lines = [
        f"params: embedder {p['embedder']:,}  transformer {p['transformer']:,}  positions {p['positions']:,}  "
        f"total {p['total']:,}  (embedder share {100 * i['embedder_share']:.2f}%; 12·L·d² = {i['params_seed002']:,})",
        f"compute: {i['flops']:.4g} FLOPs of a {i['flops_budget']:.4g} budget, {i['steps']:,} steps, "
        f"{i['tokens']:,} tokens ({i['epochs']:.2f} epochs)",
        f"time: {i['train_time']:.1f} s train + {i['eval_time']:.1f} s eval on {i['device']} ({i['precision']}, "
        f"{i['threads']} threads): {i['tokens_per_s']:,.0f} tokens/s, {i['flops_per_s'] / 1e9:.1f} GFLOP/s",
        f"machine: {i['machine']}",
        f"memory: peak {i['peak_memory_bytes'] / 2**20:,.0f} MiB "
        f"({'tensors allocated' if i['device'].startswith('cuda') else 'process RSS'}; training tensors estimated at "
        f"{i['memory_estimate_bytes'] / 2**20:,.0f} MiB)",
        "",
        f"{'split':<6} {'HR@10':>7} {'NDCG@10':>8} {'HR@50':>7} {'NDCG@50':>8} {'MRR':>7} {'CE':>7}",
    ]
    for s in ("valid", "test"):
        lines.append(f"{s:<6} {m[f'{s}_hr@10']:>7.4f} {m[f'{s}_ndcg@10']:>8.4f} {m[f'{s}_hr@50']:>7.4f} "
                     f"{m[f'{s}_ndcg@50']:>8.4f} {m[f'{s}_mrr']:>7.4f} {m[f'{s}_ce']:>7.3f}")
    return "\n".join(lines)
