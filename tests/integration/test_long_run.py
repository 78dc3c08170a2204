"""An 8-round run on the bundled model with tiny settings: memory stays flat and the DB grows
by a steady amount per round (what a researcher leaving a loop overnight relies on). Memory is
compared from round 2 (after the first adapters and caches exist) to the last: six rounds in
which nothing may grow; `python bench/long_run.py --rounds 20` prints the longer figures.

The run anchors to the previous round (`ref = prev`), which folds each finished round into the
weights, so nothing should grow with the round count. (With `ref = base` the exact reference
needs every round's adapter kept unfolded: memory then grows by one adapter per round, by
design; `python bench/long_run.py --ref base` prints those figures.)
"""

import statistics

import pytest

from steerheal.filters import FilterConfig
from steerheal.heal import HealConfig
from steerheal.loop import RunConfig, run_loop, start_run
from steerheal.store import Store
from tests.conftest import TINY_INSTRUMENTS, TINYMFV_DATA

pytestmark = pytest.mark.integration
ROUNDS = 8
# every completion is kept, so each round trains (the filters are not what this measures)
KEEP_ALL = FilterConfig(max_tail_perplexity=1e9, max_repetition=1.0, reject_narration=False, reject_refusal=False)


def test_eight_rounds_keep_memory_flat_and_the_db_linear(tmp_path):
    store = Store(tmp_path / "runs.db")
    # The smallest settings that still allocate what a round allocates (a vector, completions, a
    # heal with its train logs, a saved adapter, probe answers); the tinymfv evals, which store
    # nothing that grows, are off (their own memory is the eval's business, not the loop's). The
    # instruments still measure every round, on two one-line axis items and the tiny drift set.
    items = tmp_path / "items.jsonl"
    items.write_text('{"prompt": "Help her?", "pos": "Yes.", "neg": "No."}\n'
                     '{"prompt": "Obey?", "pos": "No.", "neg": "Yes."}\n')
    cfg = RunConfig(rounds=ROUNDS, n_completions=4, max_new_tokens=4, filters=KEEP_ALL, tinymfv="off",
                    n_contexts=1, probe_tokens=1, data_dir=TINYMFV_DATA, **TINY_INSTRUMENTS, axis_items=str(items),
                    heal=HealConfig(rank=8, lora_alpha=16, epochs=1, ref="prev"))
    run_id = start_run(store, cfg)
    assert run_loop(store, run_id)["status"] == "completed"
    assert not store.rows("evals", run_id)
    assert len(store.rows("axis_evals", run_id)) == 2 + 2 * ROUNDS and len(store.rows("absorption", run_id)) == ROUNDS
    rounds = sorted((r for r in store.rows("rounds", run_id) if r["status"] == "completed"), key=lambda r: r["round"])
    assert [r["round"] for r in rounds] == list(range(ROUNDS))
    rss = [r["rss_mb"] for r in rounds]
    db = [r["db_mb"] for r in rounds]
    table = "\n".join(f"round {r['round']:>2}: rss {r['rss_mb']:7.1f} MB, db {r['db_mb'] * 1024:7.1f} KB"
                      for r in rounds)
    print(table)
    growth = rss[-1] / rss[2] - 1
    assert growth < 0.10, f"memory grew {growth:.1%} from round 2 to round {ROUNDS - 1}:\n{table}"
    assert max(rss[2:]) < 1.10 * rss[2], f"memory peaked over 10% above round 2:\n{table}"
    steps = [b - a for a, b in zip(db[1:], db[2:])]
    typical = statistics.median(steps)
    assert typical > 0
    assert all(0.5 * typical <= s <= 2.0 * typical for s in steps), f"DB growth per round is not steady:\n{table}"
