"""scripts/profile_decoding.py (where batch-1 time goes, per component) and
scripts/latency_scaling.py (speed-up over AR beam 5 as the batch grows, 1 and 2 threads), end to
end on tiny models trained here on the toy corpus (the numbers are not the point: the plumbing
and the bookkeeping are)."""

import json
import re
import shutil
import sys
from pathlib import Path

import pytest

from helpers import NAR, OPTIM, REPO, run, train

PROFILE = str(REPO / "scripts" / "profile_decoding.py")
SCALING = str(REPO / "scripts" / "latency_scaling.py")
COMPONENTS = ["encoder", "prior", "decoder", "posterior", "score network", "teacher", "everything else"]


@pytest.fixture(scope="module")
def work(toy_data, ar_teacher, tmp_path_factory):
    """A pipeline-style work dir with the teacher, a LaNMT and a score network."""
    root = tmp_path_factory.mktemp("profile_work")
    ck = root / "checkpoints"
    (ck / "teacher").mkdir(parents=True)
    shutil.copy(ar_teacher, ck / "teacher" / "checkpoint_best.pt")
    train(toy_data, str(ck / "lanmt"), [*NAR, "--arch", "lanmt_tiny", "--criterion", "lanmt_elbo",
                                        "--share-all-embeddings", *OPTIM], max_update=20)
    lanmt = ck / "lanmt" / "checkpoint_best.pt"
    shutil.copy(ck / "lanmt" / "checkpoint_last.pt", lanmt)
    train(toy_data, str(ck / "score_net"), [*NAR, "--arch", "score_net_tiny", "--criterion", "score_matching",
                                            "--lanmt-path", str(lanmt), *OPTIM], max_update=10)
    shutil.copy(ck / "score_net" / "checkpoint_last.pt", ck / "score_net" / "checkpoint_best.pt")
    return root


def common(toy_data, work):
    return ["--work", str(work), "--data-bin", toy_data, "--bpe", "none", "--source-lang", "src",
            "--target-lang", "tgt", "--search-sizes", "3", "--score-search-sizes", "3"]


def table_rows(md):
    """{system key: {column: cell}} of the markdown table."""
    lines = [l for l in md.splitlines() if l.startswith("|")]
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = {}
    for line in lines[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[re.match(r"`([^`]+)`", cells[0]).group(1)] = dict(zip(head, cells))
    return rows


def test_profile_splits_each_row_into_components(toy_data, work, tmp_path):
    out = tmp_path / "profile"
    systems = "lanmt.prior,lanmt.delta1,lanmt.search3,score.steps1,score.search3,ar.beam5"
    proc = run([sys.executable, PROFILE, *common(toy_data, work), "--systems", systems,
                "--sentences", "4", "--warmup", "1", "--clock", "cpu", "--out", str(out)])
    md = Path(f"{out}.md").read_text()
    assert "python scripts/profile_decoding.py" in md and "clock: CPU time" in md
    rows = table_rows(md)
    assert set(rows) == set(systems.split(",")), rows.keys()
    for key, row in rows.items():
        parts = sum(float(row[c]) for c in COMPONENTS if row[c])
        assert parts == pytest.approx(float(row["mean ms"]), abs=0.01 * len(COMPONENTS) + 1e-6), (key, row)
    assert rows["lanmt.prior"]["x lanmt.prior"] == "1.00"
    assert rows["ar.beam5"]["x faster than ar.beam5"] == "1.00"
    # each row's own pieces are charged to it, and only those
    assert rows["lanmt.delta1"]["posterior"] and not rows["lanmt.prior"]["posterior"]
    assert rows["lanmt.search3"]["teacher"] and rows["score.search3"]["teacher"]
    assert rows["score.steps1"]["score network"] and not rows["lanmt.delta1"]["score network"]
    assert rows["ar.beam5"]["decoder"] and not rows["ar.beam5"]["prior"]
    data = json.loads(Path(f"{out}.json").read_text())
    assert sorted(s["key"] for s in data["systems"]) == sorted(systems.split(","))  # benchmark order
    assert all(len(s["latencies_ms"]) == 4 for s in data["systems"])
    assert proc.stdout.count("| `") == len(rows)
    assert Path(f"{out}.png").stat().st_size > 5000  # the components as stacked bars


def test_scaling_measures_every_batch_size_and_thread_count(toy_data, work, tmp_path):
    out = tmp_path / "scaling"
    run([sys.executable, SCALING, *common(toy_data, work), "--systems", "ar.beam5,lanmt.prior,score.steps1",
         "--sentences", "6", "--tokens", "0,60,400", "--thread-counts", "1,2", "--out", str(out)])
    data = json.loads(Path(f"{out}.json").read_text())
    rows = data["rows"]
    assert len(rows) == 3 * 3 * 2
    assert {(r["threads"], r["max_tokens"]) for r in rows} == {(t, n) for t in (1, 2) for n in (0, 60, 400)}
    by = {(r["system"], r["threads"], r["max_tokens"]): r for r in rows}
    assert all(by["ar.beam5", t, n]["speedup"] == 1.0 for t in (1, 2) for n in (0, 60, 400))
    # one sentence a batch: as many batches as sentences; bigger batches: fewer
    assert by["lanmt.prior", 1, 0]["batches"] == 6 > by["lanmt.prior", 1, 400]["batches"]
    assert all(r["ms_per_sentence"] > 0 and r["speedup"] > 0 for r in rows)
    md = Path(f"{out}.md").read_text()
    assert "## 1 thread" in md and "## 2 threads" in md and "python scripts/latency_scaling.py" in md
    assert Path(f"{out}.png").stat().st_size > 10_000


def test_scaling_times_whole_batch_projection_twins(toy_data, work, tmp_path):
    """--whole-batch-projection adds KEY.whole for the nar_refine systems (not the AR ones)."""
    out = tmp_path / "scaling_whole"
    run([sys.executable, SCALING, *common(toy_data, work), "--systems", "ar.beam5,lanmt.prior",
         "--sentences", "6", "--tokens", "0,400", "--thread-counts", "1", "--whole-batch-projection",
         "--no-plot", "--out", str(out)])
    rows = json.loads(Path(f"{out}.json").read_text())["rows"]
    assert sorted({r["system"] for r in rows}) == ["ar.beam5", "lanmt.prior", "lanmt.prior.whole"]
    assert len(rows) == 3 * 2 and all(r["ms_per_sentence"] > 0 for r in rows)
    md = Path(f"{out}.md").read_text()
    assert "`lanmt.prior.whole`" in md
    # --replot: OUT.md (and OUT.png) again from OUT.json, nothing decoded
    Path(f"{out}.md").unlink()
    run([sys.executable, SCALING, "--work", str(work), "--out", str(out), "--replot"])
    assert Path(f"{out}.md").read_text() == md
    assert Path(f"{out}.png").stat().st_size > 10_000
