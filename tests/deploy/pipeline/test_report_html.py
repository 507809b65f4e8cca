"""report.json / report.html / the terminal summary of a real tiny run: the same figures everywhere, every
plot a real image, nothing outside the file, and Chromium renders it; `smpq-deploy report` rebuilds them."""
from __future__ import annotations

import base64
import html
import io
import json
import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deploy.pipeline.report import NOT_MEASURED, board_summary, forced_lines, summary_rows

# the tiny pipeline configuration of tests/deploy/pipeline/test_pipeline.py, with a flash budget the argmax policy does not meet:
# 26 KB leaves room for little more than 2-bit weights everywhere (24.6 KB; uniform 4-bit is 43 KB); no latency
# budget, so that a recalibrated cost model cannot change what this test checks
ARGS = ["--device", "qemu-mps2-an500", "--model", "resnet8", "--subset", "512", "--no-progress",
        "--set", "train.epochs=1", "--set", "search.epochs=2", "--set", "search.warmup_epochs=1",
        "--set", "qat.epochs=1", "--set", "search.w_bits=[2,4,8]", "--set", "search.a_bits=[4,8]",
        "--set", "search.shapley.permutations=2", "--set", "harness.samples=40",
        "--set", "budgets.flash_bytes=26KB", "--set", "deploy.formats=[smpq]"]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("report") / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "160"}
    proc = subprocess.run([sys.executable, "-m", "deploy.cli.main", *ARGS, "--output", str(out)], env=env,
                          capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc.stdout


class _Page(HTMLParser):
    """Tables (by id) as rows of cell texts, every <img>, and every attribute that could reference a file."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.images: list[dict[str, str]] = []
        self.references: list[str] = []
        self.tags: set[str] = set()
        self._table: str | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        self.tags.add(tag)
        self.references += [v for k, v in a.items() if k in ("src", "href", "srcset", "data", "action", "poster")]
        if tag == "img":
            self.images.append(a)
        elif tag == "table":
            self._table = a.get("id", "")
            self.tables[self._table] = []
        elif tag == "tr" and self._table is not None:
            self.tables[self._table].append([])
        elif tag in ("td", "th") and self._table is not None:
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self._table is not None:
            self.tables[self._table][-1].append("".join(self._cell))
            self._cell = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def _page(out: Path) -> _Page:
    page = _Page()
    page.feed((out / "report.html").read_text())
    return page


def _decode(src: str) -> np.ndarray:
    assert src.startswith("data:image/png;base64,"), src[:40]
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).convert("RGB"), dtype=np.float64)


def test_json_html_and_terminal_carry_the_same_figures(run: tuple[Path, str]) -> None:
    out, stdout = run
    report = json.loads((out / "report.json").read_text())
    page = _page(out)
    for name, rows in summary_rows(report).items():
        assert [list(r) for r in rows] == page.tables[f"table-{name}"][1:], name
    # figures the rows were made from, checked against the sources they came from
    policy = json.loads((out / "policy.json").read_text())
    assert [(L["name"], L["w_bits"], L["a_bits"]) for L in report["layers"]] == \
        [(L["name"], L["w_bits"], L["a_bits"]) for L in policy["layers"]]
    assert page.tables["table-layers"][1][2:4] == [str(policy["layers"][0]["w_bits"]), str(policy["layers"][0]["a_bits"])]
    acc = page.tables["table-accuracy"]
    assert acc[1][1] == f"{100 * policy['accuracy']['fp_test']:.2f}%"
    assert acc[3][1] == f"{100 * report['host_verification']['reference_accuracy']:.2f}%"
    board = board_summary(out)  # the run's board stage measures on QEMU when the firmware tools are there
    assert acc[4][1] == (NOT_MEASURED if board is None or board["accuracy"] is None else f"{100 * board['accuracy']:.2f}%")
    flat = " ".join(stdout.split())
    for rows in summary_rows(report).values():
        for row in rows:
            assert row[0] in flat and row[1] in flat, row
    assert report["command"].startswith("smpq-deploy run ") and "budgets.flash_bytes=26KB" in report["command"]
    assert page.tables["table-versions"] and report["versions"]["python"] == f"{sys.version_info.major}.{sys.version_info.minor}.{sys.version_info.micro}"
    assert report["versions"]["torch"] != "absent"


def test_the_budget_step_changed_the_argmax_policy_and_says_why(run: tuple[Path, str]) -> None:
    out, stdout = run
    report = json.loads((out / "report.json").read_text())
    step = report["budget_step"]
    assert step["how"].startswith("knapsack") and step["changed"] and step["argmax_over"]
    for over in step["argmax_over"]:  # the argmax policy really broke these limits, and the chosen one meets them
        assert over["value"] > over["limit"] >= report["budget"][over["budget"]]["value"]
    assert all(e["ok"] for e in report["budget"].values())
    policy = json.loads((out / "policy.json").read_text())
    argmax = policy["method_details"]["argmax_policy"]
    chosen = {L["name"]: [L["w_bits"], L["a_bits"]] for L in policy["layers"]}
    assert {c["layer"] for c in step["changed"]} == {n for n in chosen if argmax[n] != chosen[n]}
    lines = forced_lines(step)
    guard = policy["selection"]["guard"]  # pipeline.yaml's uniform guard ran and its decision is said
    assert guard["uniform"] and guard["kept"] in ("search", "uniform")
    if guard["kept"] == "search":
        assert "the knapsack changed" in lines[0] and lines[-1].startswith("uniform guard: ")
    else:
        assert lines[0].startswith(f"the uniform guard chose uniform {guard['uniform'].upper()}")
    flat = " ".join(stdout.split())
    assert all(" ".join(line.split()) in flat for line in lines)
    text = " ".join(html.unescape((out / "report.html").read_text()).replace("\xa0", " ").split())
    assert all(" ".join(line.split()) in text for line in lines)


def test_shapley_history_has_every_round_and_candidate(run: tuple[Path, str]) -> None:
    out, _ = run
    hist = json.loads((out / "report.json").read_text())["shapley"]
    rounds = json.loads((out / "policy.json").read_text())["method_details"]["rounds"]
    assert [r["index"] for r in hist["rounds"]] == list(range(rounds)) and rounds >= 1
    n = len(hist["players"])
    assert all(len(r["psi"]) == len(r["alpha"]) == n for r in hist["rounds"])
    assert any(abs(v) > 0 for v in hist["rounds"][0]["psi"])


def test_every_image_is_inline_nonblank_and_nothing_points_outside(run: tuple[Path, str]) -> None:
    out, _ = run
    page = _page(out)
    assert not page.tags & {"script", "link", "iframe", "object", "embed"}
    raw = (out / "report.html").read_text()
    assert "url(" not in raw and "@import" not in raw
    assert all(ref.startswith("data:") for ref in page.references), [r[:60] for r in page.references if not r.startswith("data:")]
    ids = {img["id"] for img in page.images}
    assert ids == {"fig-accuracy", "fig-budget", "fig-bits", "fig-shapley-alpha", "fig-shapley-psi", "fig-latency", "fig-artifacts"}
    for img in page.images:
        pixels = _decode(img["src"])
        assert pixels.shape[0] > 50 and pixels.shape[1] > 200, img["id"]
        assert pixels.std() > 20, f"{img['id']} is blank"
        assert (pixels.std(axis=2) > 40).mean() > 0.002, f"{img['id']} has no coloured marks"


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (scripts/setup.sh installs it)")
def test_chromium_renders_the_page_with_its_plots(run: tuple[Path, str], tmp_path: Path) -> None:
    out, _ = run
    shot = tmp_path / "report.png"
    base = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}"]
    url = (out / "report.html").resolve().as_uri()
    subprocess.run([*base, f"--screenshot={shot}", "--window-size=1280,4000", url], capture_output=True, timeout=180, check=True)
    dom = subprocess.run([*base, "--dump-dom", url], capture_output=True, text=True, timeout=180, check=True).stdout
    assert len(re.findall(r"<img [^>]*src=\"data:image/png;base64,", dom)) == 7
    pixels = np.asarray(Image.open(shot).convert("RGB"), dtype=np.float64)
    assert pixels.shape[:2] == (4000, 1280)
    coloured = pixels.std(axis=2) > 40  # plot marks; text and page are grey/white
    assert coloured.mean() > 0.01
    rows = np.flatnonzero(coloured.any(axis=1))
    assert rows.max() - rows.min() > 2000, "the plots should span the page"


def test_report_command_rebuilds_both_files(run: tuple[Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from deploy.cli.main import main

    src, _ = run
    out = tmp_path / "copy"
    shutil.copytree(src, out)
    before = json.loads((out / "report.json").read_text())
    (out / "report.html").unlink()
    assert main(["report", "--run", str(out)]) == 0
    after = json.loads((out / "report.json").read_text())
    for key in ("budget", "layers", "accuracies", "budget_step", "shapley", "host_verification", "command", "deployed"):
        assert after[key] == before[key], key
    assert len(_page(out).images) == 7
    assert main(["report", "--run", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "policy.json" in err


@pytest.mark.hil
def test_on_board_figures_come_from_the_measurement(run: tuple[Path, str], tmp_path: Path) -> None:
    """The real firmware on QEMU writes board.json; the rebuilt report shows its accuracy and per-op times."""
    from deploy.cli.main import main
    from tests.hil.conftest import require_tools

    require_tools()
    src, _ = run
    out = tmp_path / "measured"
    shutil.copytree(src, out)
    assert main(["measure", "--run", str(out), "--device", "qemu-mps2-an500", "--samples", "3", "--windows", "1",
                 "--iterations", "1", "--warmup", "0", "--no-progress"]) == 0
    assert main(["report", "--run", str(out)]) == 0
    board = json.loads((out / "board.json").read_text())
    report = json.loads((out / "report.json").read_text())
    assert report["accuracies"]["on_board"]["value"] == board["accuracy"]["top1"]
    assert "3 test images" in report["accuracies"]["on_board"]["where"] and "integer reference: yes" in report["accuracies"]["on_board"]["where"]
    ops = report["latency"]["ops"]
    assert [o["measured"] for o in ops] == [float(layer["instructions"]) for layer in board["layers"]]
    assert [o["type"] for o in ops if o["type"] in ("conv2d", "add")] == [layer["kind"] for layer in board["layers"] if layer["kind"] in ("conv2d", "add")]
    page = _page(out)
    assert page.tables["table-accuracy"][4][1] == f"{100 * board['accuracy']['top1']:.2f}%"
    assert page.tables["table-latency"][2][1] == f"{board['latency']['per_inference']:,.0f} instructions (board)"
    assert _decode(next(i["src"] for i in page.images if i["id"] == "fig-latency")).std() > 20


def test_board_json_is_read_defensively(tmp_path: Path) -> None:
    assert board_summary(tmp_path) is None
    (tmp_path / "board.json").write_text("{not json")
    assert board_summary(tmp_path) is None
    (tmp_path / "board.json").write_text(json.dumps({"accuracy": {"top1": 0.5}, "samples": 20, "bit_exact": True,
                                                     "latency": {"unit": "instructions", "per_inference": 1234.0},
                                                     "layers": [{"op": 0, "kind": "conv2d", "ticks": 3, "instructions": 1000},
                                                                "junk"]}))
    got = board_summary(tmp_path)
    assert got is not None and got["accuracy"] == 0.5 and got["samples"] == 20 and got["bit_exact"] is True
    assert got["latency"] == 1234.0 and got["latency_unit"] == "instructions"
    assert got["layer_times"] == [{"index": 0, "name": "conv2d", "value": 1000.0}] and got["layer_time_unit"] == "instructions"
    (tmp_path / "board.json").write_text(json.dumps({"status": "board not connected", "layers": "?"}))
    got = board_summary(tmp_path)
    assert got is not None and got["accuracy"] is None and got["layer_times"] is None and got["status"] == "board not connected"


def test_fp_checkpoint_choice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    from deploy.pipeline import pretrained

    def cfg(checkpoint: str | None = None, use: bool = True, name: str = "resnet8") -> SimpleNamespace:
        return SimpleNamespace(model=SimpleNamespace(checkpoint=checkpoint, pretrained=use, name=name, model_kwargs={}),
                               dataset=SimpleNamespace(name="cifar10"))

    shipped = tmp_path / "shipped.pt"
    monkeypatch.setattr(pretrained, "shipped_path", lambda rel: shipped)
    out = tmp_path / "run"
    assert pretrained.fp_checkpoint(cfg(), out) == out / "fp.pt"           # not shipped yet: train
    shipped.write_bytes(b"x")
    assert pretrained.fp_checkpoint(cfg(), out) == shipped                 # shipped: start from it
    assert pretrained.fp_checkpoint(cfg(use=False), out) == out / "fp.pt"  # model.pretrained=false
    assert pretrained.fp_checkpoint(cfg(name="mbv2"), out) == out / "fp.pt"
    assert pretrained.fp_checkpoint(cfg("my.pt"), out) == Path("my.pt")
    out.mkdir()
    (out / "fp.pt").write_bytes(b"x")
    assert pretrained.fp_checkpoint(cfg(), out) == out / "fp.pt"           # the run's own training wins


def test_the_budget_step_says_when_the_uniform_guard_returned_uniform() -> None:
    guard = {"z": 2.0, "uniform": "w4a4", "value_uniform": 0.75, "value_chosen": 0.748, "difference": -0.002,
             "standard_error": 0.003, "images": 5000, "kept": "uniform"}
    step = {"how": "knapsack, uniform guard (z 2: kept uniform)", "changed": [{"layer": "l1", "w_bits": [8, 4], "a_bits": [8, 4]}],
            "argmax_over": [{"budget": "flash_bytes", "value": 50000.0, "limit": 36000.0}], "guard": guard}
    lines = forced_lines(step)
    assert lines[0] == ("the uniform guard chose uniform W4A4: the searched policy is worth 74.80% in SMPQ's game, "
                        "uniform W4A4 75.00% (± 0.30%), not 2 standard errors more; 1 layer(s) differ from the argmax policy")
    assert lines[1] == "  l1: weights 8→4 bits, activations 8→4 bits" and len(lines) == 2
    kept = forced_lines({**step, "guard": {**guard, "kept": "search"}})
    assert kept[0].startswith("the argmax policy broke flash_bytes") and kept[-1].endswith("kept the searched policy")
    assert forced_lines({**step, "guard": None})[-1] == lines[1]  # no guard ran: nothing said about it
