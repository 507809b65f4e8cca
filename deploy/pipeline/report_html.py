"""``report.html``: one self-contained page (inline PNG figures, inline CSS, no scripts, no network) rendered
from the report dict; its tables are :func:`deploy.pipeline.report.summary_rows`, the rows the terminal prints."""
from __future__ import annotations

import base64
import html
import json
from typing import Any

from deploy.pipeline.report import TABLE_HEADERS, forced_lines, summary_rows
from deploy.pipeline.report_plots import FIGURES

CSS = """
body{font-family:system-ui,sans-serif;margin:24px auto;max-width:1200px;color:#222}
h1{font-size:22px}h2{font-size:17px;border-bottom:1px solid #ddd;padding-bottom:3px;margin-top:28px}
table{border-collapse:collapse;font-size:13px;margin:8px 0}td,th{border:1px solid #ddd;padding:3px 8px;text-align:left}
th{background:#f3f3f3}td.num{text-align:right}img{max-width:100%;display:block;margin:8px 0}
pre{background:#f6f6f6;padding:8px;white-space:pre-wrap;font-size:12px}.over{color:#b00;font-weight:bold}
.forced{background:#fff6e0;border-left:4px solid #e0a000;padding:6px 10px;font-size:13px}
"""


def _table(name: str, rows: list[tuple[str, ...]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in TABLE_HEADERS[name])
    body = "".join("<tr>" + "".join(f'<td{" class=over" if c == "OVER" else ""}>{html.escape(c)}</td>' for c in r) + "</tr>"
                   for r in rows)
    return f'<table id="table-{name}"><tr>{head}</tr>{body}</table>'


def _img(name: str, png: bytes, title: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img id="fig-{name}" alt="{html.escape(title)}" src="data:image/png;base64,{data}">'


def render_html(report: dict[str, Any]) -> str:
    """The whole page as a string."""
    rows = summary_rows(report)
    figs = {name: (title, fn(report)) for name, (title, fn) in FIGURES.items()}
    title = f"{report['model']} on {report['device']} — {report['method']} ({report['dataset']}, seed {report['seed']})"
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>"]

    def section(heading: str, *body: str) -> None:
        parts.append(f"<h2>{html.escape(heading)}</h2>" + "".join(body))

    forced = "<br>".join(html.escape(line).replace("  ", "&nbsp;&nbsp;") for line in forced_lines(report.get("budget_step") or {}))
    section("Accuracy", _img("accuracy", figs["accuracy"][1], figs["accuracy"][0]), _table("accuracy", rows["accuracy"]))
    section("Budget use", f'<p class="forced" id="forced">{forced}</p>', _img("budget", figs["budget"][1], figs["budget"][0]),
            _table("budget", rows["budget"]))
    section("Bit widths per layer", _img("bits", figs["bits"][1], figs["bits"][0]), _table("layers", rows["layers"]))
    section("Shapley contributions", _img("shapley-alpha", figs["shapley-alpha"][1], figs["shapley-alpha"][0]),
            _img("shapley-psi", figs["shapley-psi"][1], figs["shapley-psi"][0]))
    section("Latency per op", _img("latency", figs["latency"][1], figs["latency"][0]),
            _table("latency", rows.get("latency", [])))
    section("Host verification", _table("verification", rows["verification"]))
    section("Artifacts", _img("artifacts", figs["artifacts"][1], figs["artifacts"][0]), _table("artifacts", rows["artifacts"]))
    board = report.get("board_run") or ""
    section("Board", f"<p>{html.escape(str(board))}</p>", _table("ethos_u", rows["ethos_u"]) if "ethos_u" in rows else "")
    section("Command and versions", f"<pre id='command'>{html.escape(str(report.get('command')))}</pre>",
            "<table id='table-versions'>" + "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>"
                                                    for k, v in (report.get("versions") or {}).items()) + "</table>",
            f"<p>Stage wall times (s): {html.escape(json.dumps({k: round(v, 1) for k, v in (report.get('stage_seconds') or {}).items()}))}</p>")
    parts.append("</body></html>\n")
    return "".join(parts)
