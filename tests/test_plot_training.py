"""scripts/plot_training.py: validation curves parsed from fairseq-train logs (resumed runs,
repeated validations, models without BLEU) and the summary that says whether a run was still
improving."""

import json
import sys

from helpers import REPO, run

SCRIPT = str(REPO / "scripts" / "plot_training.py")


def valid_line(update, **fields):
    body = " | ".join(f"{k} {v}" for k, v in fields.items())
    return (f"2026-11-29 20:00:00 | INFO | valid | epoch 001 | valid on 'valid' subset | {body} | "
            f"wps 1000.0 | num_updates {update} | best_loss 1.0\n")


def test_curves_from_logs(tmp_path):
    logs = tmp_path / "work" / "logs"
    logs.mkdir(parents=True)
    # LaNMT: BLEU rising, a resume re-validates update 300 (the last value is kept)
    lanmt = ["2026-11-29 | INFO | train_inner | epoch 001: loss=9.1, num_updates=50\n"]
    for u, b, z in [(100, 2.0, 0.01), (200, 5.0, 0.1), (300, 7.0, 0.2)]:
        lanmt.append(valid_line(u, loss=10 - u / 100, nll_loss=5, kl=1.2, z_usage=z, bleu=b))
    lanmt.append("resumed\n")
    lanmt.append(valid_line(300, loss=7.0, kl=1.3, z_usage=0.25, bleu=7.5))
    lanmt.append(valid_line(400, loss=6.5, kl=1.3, z_usage=0.3, bleu=9.5))
    (logs / "lanmt.log").write_text("".join(lanmt))
    # the teacher logs no BLEU; its loss falls, then rises (best before last)
    (logs / "teacher.log").write_text("".join(valid_line(u, loss=l, nll_loss=l / 2)
                                              for u, l in [(136, 6.0), (272, 5.0), (408, 5.2)]))
    out = tmp_path / "out"
    proc = run([sys.executable, SCRIPT, "--work", str(tmp_path / "work"), "--out", str(out)])
    assert "training_curves.png" in proc.stdout
    data = json.loads((out / "training_curves.json").read_text())
    assert list(data["curves"]["lanmt"]) == ["100", "200", "300", "400"]
    assert data["curves"]["lanmt"]["300"]["bleu"] == 7.5  # the resumed run's validation
    rows = {r["model"]: r for r in data["summary"]}
    assert rows["lanmt"]["best_bleu"] == 9.5 and rows["lanmt"]["best_bleu_update"] == 400
    assert rows["lanmt"]["bleu_slope_per_1k"] > 0  # still improving when it stopped
    assert rows["lanmt"]["last_z_usage"] == 0.3
    assert "last_bleu" not in rows["teacher"]
    assert rows["teacher"]["best_loss"] == 5.0 and rows["teacher"]["best_loss_update"] == 272
    md = (out / "training_curves.md").read_text()
    assert "| lanmt | 4 | 400 | 9.50 | 9.50 (400) |" in md and "| teacher | 3 | 408 | – |" in md
    assert (out / "training_curves.png").stat().st_size > 10000


def test_output_goes_to_the_work_dir_by_default(tmp_path):
    """Without --out the curves go beside the benchmark's results in WORK/benchmark, never over
    the committed examples/multi30k/results/."""
    logs = tmp_path / "work" / "logs"
    logs.mkdir(parents=True)
    (logs / "teacher.log").write_text(valid_line(136, loss=6.0, nll_loss=3.0))
    committed = REPO / "examples" / "multi30k" / "results" / "training_curves.json"
    before = committed.read_bytes()
    try:
        run([sys.executable, SCRIPT, "--work", str(tmp_path / "work")])
        assert committed.read_bytes() == before
    finally:  # the old default wrote there: put the committed file back
        if committed.read_bytes() != before:
            committed.write_bytes(before)
    assert list(json.loads((tmp_path / "work" / "benchmark" / "training_curves.json").read_text())[
        "curves"]) == ["teacher"]


def test_no_logs_is_an_error(tmp_path):
    (tmp_path / "logs").mkdir()
    proc = run([sys.executable, SCRIPT, "--work", str(tmp_path), "--out", str(tmp_path / "o")], check=False)
    assert proc.returncode != 0 and "no validation lines" in proc.stderr
