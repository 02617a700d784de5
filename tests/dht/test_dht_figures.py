"""simulations/dht_figures.py at a tiny size: its rows are sane and its CLI writes CSVs."""

import csv
import importlib.util
import math
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "simulations" / "dht_figures.py"
_spec = importlib.util.spec_from_file_location("dht_figures", SCRIPT)
figures = sys.modules.setdefault("dht_figures", importlib.util.module_from_spec(_spec))
_spec.loader.exec_module(figures)

N = 30


@pytest.fixture(scope="module")
def lookup_row():
    return figures.lookup_experiment(N, seed=4, records=5, lookups=12, view=10)


def test_lookups_all_succeed_over_the_network(lookup_row):
    row = lookup_row
    assert row.n == N and row.lookups == 12
    assert row.success == 1.0
    assert row.log2_n == pytest.approx(math.log2(N))
    assert row.hops_mean >= 1 and row.hops_mean <= row.hops_max <= math.ceil(math.log2(N))
    assert row.hops_p95 >= 1 and row.hops_p95 <= row.hops_max
    # one round trip is at least 2 x 0.5 ms; a LAN lookup is far under its deadline
    assert row.latency_mean_ms >= 1.0 and row.latency_mean_ms < 100
    assert row.latency_p95_ms >= 1.0 and row.latency_p95_ms < 100
    assert row.messages >= 1
    assert 10 <= row.table <= N - 1
    assert row.replicas == 20  # k replicas of every record
    assert 0 < row.local < 1
    assert 0 < row.setup_s <= row.wall_s
    assert len(row.digest) == 16


def test_the_same_seed_gives_the_same_row(lookup_row):
    again = figures.lookup_experiment(N, seed=4, records=5, lookups=12, view=10)
    assert again.digest == lookup_row.digest
    assert (again.hops_mean, again.latency_mean_ms, again.messages) == (
        lookup_row.hops_mean, lookup_row.latency_mean_ms, lookup_row.messages)


def test_records_of_live_publishers_survive_and_those_of_dead_ones_are_gone():
    row = figures.survival_experiment(N, 0.25, seed=2, records=8, view=10)
    assert row.crashed == round(0.25 * N)
    assert row.live_records + row.dead_records == 8
    assert row.live_records > 0
    assert row.replicas_crash <= 20
    assert row.resolved_handover == 1.0
    assert row.resolved_republish == 1.0
    assert row.replicas_republish >= row.replicas_crash
    assert row.dead_found == 0 and row.dead_copies == 0


def test_main_prints_tables_and_digests_and_writes_csv(tmp_path, capsys):
    figures.main(["--sizes", "20", "--records", "3", "--lookups", "4", "--view", "8",
                  "--survival-size", "0", "--csv", str(tmp_path)])
    out = capsys.readouterr().out
    assert "hops mean" in out and "trace digests:" in out and "lookups  n=20" in out
    with (tmp_path / "dht_lookups.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 and rows[0]["n"] == "20" and float(rows[0]["success"]) == 1.0
    assert not (tmp_path / "dht_survival.csv").exists()
