"""TransferQueue reads and writes of the MEDS driver path at the paper's shape (512 x 16 rollouts, 3,072 tokens).

`MEDSTrainer` moves data through verl's TransferQueue on the driver in four places per step; this script times the
same calls (same fields, same layouts, nested jagged tensors as verl's agent loop writes them) on a local Ray + TQ,
outside verl, with 8,192 rows:

- `meds_prepare` I/O: read what locates the answers (per-stage: prompts, responses, response mask, extra info and
  extra fields, responses and mask padded to `(N, T)`); write the answer positions and tokens;
- `meds_features` I/O: read the features (`(N, F)`, F = 14) the workers wrote, pad;
- `meds_shaping` I/O: read the token-level scores and uids, write the shaped scores back;
- the grading metrics: read the extra fields.

It times three layouts of that I/O side by side: `per-stage` (each stage reads what it needs: prompts included,
extra fields twice, the scores read and written back for every row), `shared` (responses and mask read before the
log-prob call, prompt lengths from verl's tags, extra info, extra fields, scores and uids read once in the
background and reused, only the rows whose reward changed written back; `--changed-frac` of the rows, default 0.5)
and `recorded` (what the MEDS hook does with the recipes' reward managers: the extra fields, which hold the answer
records of verl's reward workers, read before the log-prob call and parsed with `read_answer_records`, no responses
read; `PREFETCH_FIELDS` in the background; the rest as `shared`). The background read runs during the workers'
log-prob pass; it is timed on its own here (`prefetch read`), and `critical path` leaves it out. Each step runs in
the order of a real one, with `--pause` seconds (default 2) standing for the rest of the workers' log-prob pass
between the background read and the features read. Python's garbage collector runs wherever allocations trigger it
(a full collection after the 8,192 reward-info dicts are read can land in the next timed part); `--collect` runs it
before each timed part instead, leaving its pauses out.

Run: `OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_tq.py [--rows 8192] [--tokens 3072] [--repeats 3]`
(`--collect`: see above)
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=8192)
    parser.add_argument("--tokens", type=int, default=3072)
    parser.add_argument("--prompt-tokens", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--changed-frac", type=float, default=0.5)
    parser.add_argument("--collect", action="store_true", help="collect garbage before each timed part")
    parser.add_argument("--pause", type=float, default=2.0, help="seconds of the workers' log-prob pass")
    args = parser.parse_args()

    import numpy as np
    import ray
    import torch
    import transfer_queue as tq
    from verl.utils.tensordict_utils import list_of_dict_to_tensordict

    from verl_meds.step import ANSWER_RECORD_KEY, read_answer_records
    from verl_meds.verl.hooks.meds import PREFETCH_FIELDS
    from verl_meds.verl.step_data import tq_fields
    from verl_meds.verl.worker import ANSWER_TOKEN_KEY, FEATURES_KEY, PRED_POS_KEY

    torch.set_num_threads(1)
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    tq.init()
    rng = np.random.default_rng(0)
    n, t = args.rows, args.tokens
    keys = [f"uid{i // 16}_{i}_0" for i in range(n)]
    start = time.perf_counter()
    for first in range(0, n, 512):  # the agent loop writes a chunk of trajectories at a time
        rows = []
        for i in range(first, min(n, first + 512)):
            length = int(rng.integers(t // 2, t + 1))
            scores = torch.zeros(length)
            scores[-1] = float(rng.integers(0, 2))
            rows.append(
                {
                    "prompts": torch.from_numpy(rng.integers(0, 150_000, args.prompt_tokens)),
                    "responses": torch.from_numpy(rng.integers(0, 150_000, length)),
                    "response_mask": torch.ones(length, dtype=torch.long),
                    "rm_scores": scores,
                    "uid": f"uid{i // 16}",
                    "extra_info": {"index": i // 16},
                    "extra_fields": {
                        "reward_extra_info": {
                            "acc": float(scores[-1]),
                            "pred": "4",
                            "answer_key": "",
                            ANSWER_RECORD_KEY: f"{length - 4} {int(rng.integers(0, 150_000))} {i:040x}",
                        }
                    },
                }
            )
        tq.kv_batch_put(keys=keys[first : first + 512], partition_id="train", fields=list_of_dict_to_tensordict(rows))
    print(f"{n} rows of up to {t} response tokens written in {time.perf_counter() - start:.1f} s")
    features = torch.nested.as_nested_tensor([torch.randn(14) for _ in range(n)], layout=torch.jagged)
    tq.kv_batch_put(keys=keys, partition_id="train", fields=tq_fields({FEATURES_KEY: features}, n))

    scores: list = []  # token-level scores from the background read, which the shaping writes back
    prompt_lengths = torch.full((n,), args.prompt_tokens, dtype=torch.long)
    changed = [k for i, k in enumerate(keys) if (i * 7919) % 1000 < args.changed_frac * 1000]

    def write_positions(pred_pos: torch.Tensor, token: torch.Tensor) -> None:
        fields = tq_fields({PRED_POS_KEY: pred_pos, ANSWER_TOKEN_KEY: token}, n)
        tq.kv_batch_put(keys=keys, partition_id="train", fields=fields)

    def prepare_from_responses(fields: list[str]):
        def prepare():
            data = tq.kv_batch_get(keys=keys, partition_id="train", select_fields=fields)
            responses = data["responses"].to_padded_tensor(padding=0)  # (N, T)
            data["response_mask"].to_padded_tensor(padding=0)  # (N, T)
            positions = torch.full((responses.shape[0],), 5, dtype=torch.long)
            write_positions(positions, positions)

        return prepare

    def prepare_recorded():
        data = tq.kv_batch_get(keys=keys, partition_id="train", select_fields=["extra_fields"])
        records = [f["reward_extra_info"][ANSWER_RECORD_KEY] for f in data["extra_fields"]]
        location, _ = read_answer_records(records, prompt_lengths)
        write_positions(location.pred_pos, location.token)

    def background_read(fields: list[str]):
        def read():
            data = tq.kv_batch_get(keys=keys, partition_id="train", select_fields=fields)
            for name in fields:
                if name != "rm_scores":
                    list(data[name])
            scores[:] = list(data["rm_scores"].unbind())

        return read

    def read_features():
        out = tq.kv_batch_get(keys=keys, partition_id="train", select_fields=[FEATURES_KEY])
        out[FEATURES_KEY].to_padded_tensor(padding=float("nan"))  # (N, F)

    def shaping():
        data = tq.kv_batch_get(keys=keys, partition_id="train", select_fields=["rm_scores", "uid"])
        rows = list(data["rm_scores"].unbind())
        torch.stack([s.sum() for s in rows])
        list(data["uid"])
        nested = torch.nested.as_nested_tensor([s.clone() for s in rows], layout=torch.jagged)
        tq.kv_batch_put(keys=keys, partition_id="train", fields=tq_fields({"rm_scores": nested}, n))

    def shaping_changed():
        index = {k: i for i, k in enumerate(keys)}
        nested = torch.nested.as_nested_tensor([scores[index[k]].clone() for k in changed], layout=torch.jagged)
        tq.kv_batch_put(keys=changed, partition_id="train", fields=tq_fields({"rm_scores": nested}, len(changed)))

    def grading_info():
        data = tq.kv_batch_get(keys=keys, partition_id="train", select_fields=["extra_fields"])
        list(data["extra_fields"])

    layouts = {
        "per-stage": {
            "meds_prepare I/O": prepare_from_responses(
                ["prompts", "responses", "response_mask", "extra_info", "extra_fields"]
            ),
            "meds_features I/O": read_features,
            "meds_shaping I/O": shaping,
            "grading metrics read": grading_info,
        },
        "shared": {
            "meds_prepare I/O": prepare_from_responses(["responses", "response_mask"]),
            "meds_features I/O": read_features,
            "meds_shaping I/O": shaping_changed,
            "grading metrics read": lambda: None,
            "prefetch read": background_read(["extra_info", "extra_fields", "rm_scores", "uid"]),
        },
        "recorded": {
            "meds_prepare I/O": prepare_recorded,
            "meds_features I/O": read_features,
            "meds_shaping I/O": shaping_changed,
            "grading metrics read": lambda: None,
            "prefetch read": background_read(list(PREFETCH_FIELDS)),
        },
    }
    times = {(layout, name): [] for layout, parts in layouts.items() for name in parts}
    # Each step in the order of a real one: prepare, the background read while the workers' log-prob pass runs
    # (`--pause` seconds stand for the rest of that pass), the features, the shaping, the grading metrics.
    order = ["meds_prepare I/O", "prefetch read", "pause", "meds_features I/O", "meds_shaping I/O"]
    order.append("grading metrics read")
    for _ in range(args.repeats):
        for layout, parts in layouts.items():
            for name in order:
                if name == "pause":
                    time.sleep(args.pause)
                    continue
                if name not in parts:
                    continue
                if args.collect:
                    gc.collect()
                start = time.perf_counter()
                parts[name]()
                times[layout, name].append(time.perf_counter() - start)
    median = {key: statistics.median(values) for key, values in times.items()}
    print(
        f"{'per step, median of ' + str(args.repeats):<28} {'per-stage':>9} {'shared':>8} {'recorded':>8} {'ratio':>7}"
    )
    for name in layouts["recorded"]:
        before = median.get(("per-stage", name), 0.0)
        shared = median["shared", name]
        now = median["recorded", name]
        ratio = f"{before / now:6.1f}x" if now > 1e-4 and before > 0 else "   n/a"
        print(f"{name:<28} {before:9.2f} {shared:8.2f} {now:8.2f} {ratio}")
    totals = {layout: sum(median[layout, name] for name in parts) for layout, parts in layouts.items()}
    critical = {layout: totals[layout] - median.get((layout, "prefetch read"), 0.0) for layout in layouts}
    for label, values in (("all TransferQueue I/O", totals), ("critical path (no prefetch)", critical)):
        before, shared, now = values["per-stage"], values["shared"], values["recorded"]
        print(f"{label:<28} {before:9.2f} {shared:8.2f} {now:8.2f} {before / now:6.1f}x")
    print(f"ratio shared / recorded on the critical path: {critical['shared'] / critical['recorded']:.1f}x")
    tq.close()
    ray.shutdown()


if __name__ == "__main__":
    main()
