"""A job's report: where every device-second went, what it cost, what verification found,
and the SHA-256 of each output (issue 13).

:func:`build_report` is pure: it takes what a job recorded (a
:class:`~renderfarm.job.JobResult` as a dict, or the same shape for a job that failed) and
the farm's prices, and returns plain JSON-friendly data. :func:`render_html` turns a report
into one self-contained HTML page (summary, costs, a timeline per worker, a contact sheet of
the frames). :func:`check_folder` compares delivered files with the report's hashes.

Device-seconds: a call's wall time on its worker (open, render, write) times the devices it
held — a CPU worker's cores, or each GPU it rendered on. Every call a worker made for the job
counts: pieces, checks (verification), finishing merged frames, opening the file, attempts
that failed or were dropped. Prices are per device-hour: ``CPU`` per core-hour, a GPU by its
model as Cycles names it (``NVIDIA A10``), ``*`` for any device not named.
"""

from __future__ import annotations

import base64
import html
import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from renderfarm.errors import InputError

logger = logging.getLogger(__name__)

#: report kinds of work, in the order reports list them
KINDS = ("render", "check", "finish", "inspect", "probe", "encode")


def parse_prices(items: Iterable[str]) -> dict[str, float]:
    """``["CPU=0.02", "NVIDIA A10=1.10", "*=0.5"]`` to ``{device: price per hour}``.

    Raises:
        InputError: an item is not ``DEVICE=PRICE`` with a price of 0 or more.
    """
    prices: dict[str, float] = {}
    for item in items:
        name, sep, value = str(item).rpartition("=")
        try:
            price = float(value)
        except ValueError:
            price = -1.0
        if not sep or not name.strip() or not 0 <= price < float("inf"):
            raise InputError(f"--price {item!r}: write DEVICE=PRICE per device-hour, like "
                             "CPU=0.04 (per core-hour), 'NVIDIA A10=1.10' or '*=0.5'")
        prices[name.strip()] = price
    return prices


def device_units(label: str, pool_device: str, cpus: float) -> list[tuple[str, float]]:
    """The devices one call held: ``[("CPU", cores)]`` for a CPU worker, ``[(model, 1.0)]``
    per GPU for a GPU worker (from Cycles' label ``OPTIX:NVIDIA A10,NVIDIA A10``)."""
    if pool_device != "gpu":
        return [("CPU", max(cpus, 1.0))]
    _backend, _sep, models = label.partition(":")
    names = [m.strip() for m in models.split(",") if m.strip()]
    return [(name, 1.0) for name in names] or [("GPU", 1.0)]


def price_of(device: str, prices: Mapping[str, float]) -> float | None:
    """The price per hour of ``device`` (its own, else ``*``), or None when none is set."""
    if device in prices:
        return prices[device]
    return prices.get("*")


def _status(task: Mapping[str, Any]) -> str:
    if task.get("ok"):
        return "ok"
    error = task.get("error") or {}
    return str(error.get("type") or "failed")


def _piece_checks(checks: Sequence[Mapping[str, Any]]) -> dict[tuple[int, int, str], str]:
    """``(frame, tile, original worker) -> outcome`` of each check."""
    found: dict[tuple[int, int, str], str] = {}
    for check in checks:
        workers = check.get("workers") or [""]
        found[(int(check["frame"]), int(check["tile"]), str(workers[0]))] = \
            str(check.get("outcome") or "undecided")
    return found


def _pieces_kept(kept: Any) -> dict[str, Any] | None:
    """Where the job kept its pieces (its result's ``pieces``): ``on`` the head or the
    nodes, the nodes its frames were ``merged_on``, pieces ``lost`` with their node and
    rendered again, pieces their nodes ``stored`` for a restart, lost pieces ``restored``
    from those copies."""
    if not isinstance(kept, dict):
        return None
    return {"on": str(kept.get("kept_on") or "head"),
            "merged_on": sorted(kept.get("merged_on") or []),
            **{key: int(kept.get(key) or 0) for key in ("lost", "stored", "restored")}}


def build_report(run: Mapping[str, Any], *, client: str = "", name: str | None = None,
                 state: str = "done", prices: Mapping[str, float] | None = None,
                 estimate: Mapping[str, Any] | None = None,
                 output_names: Mapping[int, str] | None = None) -> dict[str, Any]:
    """A job's report. Pure.

    Args:
        run: what the job recorded: :meth:`JobResult.to_dict` (or the same keys for a job
            that failed): ``tasks``, ``checks``, ``suspects``, ``hashes``, ``outputs``,
            ``device``, ``worker_cpus``, ``wall_seconds``, ...
        client: who submitted it (its key's name).
        name: the job's name.
        state: ``done``, ``failed``, ``cancelled`` or ``running``.
        prices: price per device-hour by device (see the module's docstring).
        estimate: what :func:`renderfarm.estimate` predicted for it, if anything.
        output_names: ``{frame: file name}`` to list outputs by (default: the path's name).
    """
    prices = dict(prices or {})
    pool_device = str(run.get("device") or "cpu")
    cpus = float(run.get("worker_cpus") or 1.0)
    tasks = list(run.get("tasks") or [])
    checks = list(run.get("checks") or [])
    suspects = sorted(run.get("suspects") or [])
    outcome_of = _piece_checks(checks)
    devices: dict[str, dict[str, Any]] = {}
    workers: dict[str, dict[str, Any]] = {}
    kinds = {kind: 0.0 for kind in (*KINDS, "failed")}
    pieces = []
    known_device = {str(t.get("worker")): str(t.get("device")) for t in tasks if t.get("device")}
    for task in tasks:
        worker = str(task.get("worker") or "?")
        label = str(task.get("device") or known_device.get(worker, ""))
        seconds = busy_seconds(task)
        kind = str(task.get("kind") or "render")
        status = _status(task)
        kinds["failed" if status != "ok" else kind] += seconds * device_count(label, pool_device,
                                                                        cpus)
        cost: float | None = 0.0  # None: a device of the call has no price (not free)
        for device, count in device_units(label, pool_device, cpus):
            price = price_of(device, prices)
            entry = devices.setdefault(device, {"device_seconds": 0.0, "price_per_hour": price,
                                                "cost": 0.0 if price is not None else None})
            entry["device_seconds"] += seconds * count
            if price is None:
                cost = None
            else:
                entry["cost"] += seconds * count * price / 3600.0
                cost = None if cost is None else cost + seconds * count * price / 3600.0
        line = workers.setdefault(worker, {
            "node": task.get("node") or "", "device": label, "calls": 0, "failures": 0,
            "busy_seconds": 0.0, "device_seconds": 0.0, "cost": 0.0,
            "suspect": worker in suspects})
        line["calls"] += 1
        line["failures"] += status != "ok"
        line["busy_seconds"] += seconds
        line["device_seconds"] += seconds * device_count(label, pool_device, cpus)
        line["cost"] = None if cost is None or line["cost"] is None else line["cost"] + cost
        line["device"] = line["device"] or label
        pieces.append(_piece(task, kind, status, seconds, cost, outcome_of, suspects))
    total_seconds = sum(d["device_seconds"] for d in devices.values())
    priced = [d["cost"] for d in devices.values() if d["cost"] is not None]
    total_cost = sum(priced) if priced else None
    report: dict[str, Any] = {
        "job_id": run.get("job_id"), "name": name, "client": client, "state": state,
        "device": pool_device, "workers_used": sorted(workers), "worker_cpus": cpus,
        "frames": list(run.get("frames") or []) if state != "failed" or run.get("outputs")
        else [], "tiles": list(run.get("tiles") or (1, 1)),
        "wall_seconds": float(run.get("wall_seconds") or 0.0),
        "total": {"device_seconds": total_seconds, "cost": total_cost,
                  "unpriced": sorted(k for k, d in devices.items() if d["cost"] is None)},
        "by_kind": kinds,
        "devices": devices,
        "workers": workers,
        "clients": {client: {"device_seconds": total_seconds, "cost": total_cost}},
        "verification": _verification(run, checks, suspects, kinds),
        "outputs": _outputs(run, output_names),
        "pieces": sorted(pieces, key=lambda p: (p["started"], p["worker"])),
        "pieces_kept": _pieces_kept(run.get("pieces")),
        "warnings": list(run.get("warnings") or []),
        "estimate": dict(estimate) if estimate else None,
        # on an autoscaled farm: the render nodes' time up against the time its calls kept
        # them busy (:func:`renderfarm.elastic.summary`)
        "elastic": dict(run["elastic"]) if run.get("elastic") else None,
    }
    estimate = estimate or run.get("estimate")
    report["estimate"] = dict(estimate) if estimate else None
    rendered = report["wall_seconds"] - float((estimate or {}).get("probe_seconds") or 0.0)
    if estimate and estimate.get("rendered") and rendered > 0:
        # the job's own render (its probe ran first, in the same job), against the prediction
        report["estimate_error"] = float(estimate["wall_seconds"]) / rendered - 1.0
    return report


def busy_seconds(task: Mapping[str, Any]) -> float:
    """A call's time on its worker: from its start to its end, else as it reported it."""
    started, finished = float(task.get("started") or 0.0), float(task.get("finished") or 0.0)
    if finished > started > 0:
        return finished - started
    return float(task.get("task_seconds") or task.get("render_seconds") or 0.0)


def device_count(label: str, pool_device: str, cpus: float) -> float:
    """How many devices one call held (a CPU worker's cores, or its GPUs)."""
    return sum(count for _d, count in device_units(label, pool_device, cpus))


def _piece(task: Mapping[str, Any], kind: str, status: str, seconds: float,
           cost: float | None,
           outcome_of: Mapping[tuple[int, int, str], str],
           suspects: Sequence[str]) -> dict[str, Any]:
    render = float(task.get("render_seconds") or 0.0)
    work = float(task.get("pixels") or 0) * float(task.get("samples") or 0)
    worker = str(task.get("worker") or "?")
    frame, tile = int(task.get("frame") or 0), int(task.get("tile") or 0)
    if kind != "render":
        verification = kind if kind == "check" else ""
    elif worker in suspects:
        verification = "suspect: rendered again"
    else:
        verification = outcome_of.get((frame, tile, worker), "not checked")
    error = task.get("error") or {}
    return {"frame": frame, "tile": tile, "tiles": list(task.get("tiles") or []),
            "kind": kind, "worker": worker, "node": task.get("node") or "",
            "device": task.get("device") or "", "status": status,
            "render_seconds": render, "busy_seconds": seconds,
            "samples_per_second": work / render if render > 0 and work else None,
            "attempt": int(task.get("attempt") or 1), "retries": int(task.get("attempt") or 1)
            - 1, "verification": verification, "cost": cost,
            "started": float(task.get("started") or 0.0),
            "finished": float(task.get("finished") or 0.0),
            "error": error.get("message") if error else None}


def _verification(run: Mapping[str, Any], checks: Sequence[Mapping[str, Any]],
                  suspects: Sequence[str], kinds: Mapping[str, float]) -> dict[str, Any]:
    outcomes: dict[str, int] = {}
    for check in checks:
        outcome = str(check.get("outcome") or "undecided")
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    return {"share": float(run.get("verify") or 0.0), "checks": len(checks),
            "outcomes": outcomes, "suspects": list(suspects),
            "device_seconds": kinds.get("check", 0.0),
            "disagreements": [c for c in checks if c.get("suspects")
                              or c.get("outcome") == "unsettled"]}


def _outputs(run: Mapping[str, Any], names: Mapping[int, str] | None) -> list[dict[str, Any]]:
    outputs = {int(k): str(v) for k, v in (run.get("outputs") or {}).items()}
    hashes = {int(k): str(v) for k, v in (run.get("hashes") or {}).items()}
    names = {int(k): str(v) for k, v in (names or {}).items()}
    return [{"frame": frame, "name": names.get(frame, Path(outputs.get(frame, "")).name),
             "sha256": hashes.get(frame)} for frame in sorted(set(outputs) | set(hashes))]


# -- delivered files ------------------------------------------------------------------------
def check_folder(report: Mapping[str, Any], folder: Path) -> list[dict[str, Any]]:
    """Compare the files in ``folder`` with the outputs the report lists.

    Returns:
        One entry per output: ``frame``, ``name``, ``status`` (``ok``, ``differs`` or
        ``missing``), ``expected`` and ``found`` SHA-256.
    """
    from renderfarm.bundle import file_sha256

    rows = []
    for output in report.get("outputs") or []:
        path = folder / str(output["name"])
        found = file_sha256(path) if path.is_file() else None
        status = "missing" if found is None else (
            "ok" if found == output.get("sha256") else "differs")
        rows.append({"frame": output["frame"], "name": output["name"], "status": status,
                     "expected": output.get("sha256"), "found": found})
    return rows


# -- text and HTML --------------------------------------------------------------------------
def money(value: float | None) -> str:
    """A cost as reports print it (``no price set`` when a device has none)."""
    return "no price set" if value is None else f"{value:.4f}"


def summary_lines(report: Mapping[str, Any]) -> list[str]:
    """A few lines for a terminal or the add-on."""
    total = report["total"]
    check = report["verification"]
    lines = [f"job {report['job_id']} {report['state']}: {len(report['frames'])} frame(s) "
             f"in {report['wall_seconds']:.1f} s on {len(report['workers_used'])} worker(s)",
             f"device time {total['device_seconds']:.1f} device-s, cost "
             f"{money(total['cost'])}"
             + (f" (no price for {', '.join(total['unpriced'])})" if total["unpriced"] else "")]
    if check["share"] or check["checks"]:
        outcomes = ", ".join(f"{n} {k}" for k, n in sorted(check["outcomes"].items()))
        lines.append(f"verification {check['share']:g}: {check['checks']} check(s)"
                     + (f" ({outcomes})" if outcomes else "")
                     + (f"; suspect: {', '.join(check['suspects'])}" if check["suspects"]
                        else ""))
    estimate = report.get("estimate")
    if estimate:
        lines.append(f"estimate {estimate['wall_seconds']:.1f} s, "
                     f"{estimate['device_seconds']:.1f} device-s, cost "
                     f"{money(estimate.get('cost'))}"
                     + (f" ({report['estimate_error'] * 100:+.0f} % of the actual time)"
                        if "estimate_error" in report else ""))
    elastic = report.get("elastic")
    if elastic and elastic.get("node_seconds"):
        share = elastic.get("busy_share")
        first = elastic.get("first_task_on_new_node")
        lines.append(f"elastic: render nodes up {elastic['node_seconds']:.1f} node-s, busy "
                     f"{elastic['busy_seconds']:.1f} s"
                     + (f" ({share * 100:.0f} %)" if share is not None else "")
                     + f"; {elastic.get('new_nodes', 0)} node(s) started for it"
                     + (f", its first task on one after {first:.1f} s" if first is not None
                        else ""))
    return lines


_COLOURS = {"render": "#4a8fd8", "check": "#a77bd8", "finish": "#4cae6a",
            "inspect": "#999999", "probe": "#d8b44a", "encode": "#3fb8b0",
            "failed": "#d85a4a"}


def render_html(report: Mapping[str, Any], thumbnails: Mapping[int, bytes] | None = None,
                style: str | None = None, header: str = "") -> str:
    """The report as one self-contained HTML page: summary, cost by device and worker,
    verification, a timeline of each worker's calls, and a contact sheet of the frames
    (``thumbnails``: ``{frame: PNG bytes}``).

    Args:
        report: what :func:`build_report` made.
        thumbnails: ``{frame: PNG bytes}`` for the contact sheet.
        style: the page's look (CSS; the web app gives its own), else a light page.
        header: HTML put before the title (the web app's navigation and a link back to the
            job's page).
    """
    e = html.escape
    look = _CSS if style is None else style
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>renderfarm report "
             f"{e(str(report['job_id']))}</title><style>{look}\n{_CSS_PARTS}</style></head>"
             f"<body>{header}",
             f"<h1>Job {e(str(report['job_id']))}"
             + (f" — {e(str(report['name']))}" if report.get("name") else "") + "</h1>",
             "<ul class='summary'>" + "".join(f"<li>{e(line)}</li>"
                                              for line in summary_lines(report)) + "</ul>"]
    parts.append("<h2>Cost by device</h2><table><tr><th>device</th><th>device-seconds</th>"
                 "<th>price / hour</th><th>cost</th></tr>")
    for device, row in sorted(report["devices"].items()):
        parts.append(f"<tr><td>{e(device)}</td><td>{row['device_seconds']:.1f}</td>"
                     f"<td>{money(row['price_per_hour'])}</td><td>{money(row['cost'])}</td>"
                     "</tr>")
    parts.append("</table><h2>Workers</h2><table><tr><th>worker</th><th>node</th>"
                 "<th>device</th><th>calls</th><th>failures</th><th>device-seconds</th>"
                 "<th>cost</th><th>trust</th></tr>")
    for worker, row in sorted(report["workers"].items()):
        parts.append(f"<tr><td>{e(worker)}</td><td>{e(str(row['node'])[:12])}</td>"
                     f"<td>{e(row['device'])}</td><td>{row['calls']}</td>"
                     f"<td>{row['failures']}</td><td>{row['device_seconds']:.1f}</td>"
                     f"<td>{money(row['cost'])}</td>"
                     f"<td class='{'bad' if row['suspect'] else ''}'>"
                     f"{'SUSPECT' if row['suspect'] else 'trusted'}</td></tr>")
    parts.append("</table>")
    parts.append(_timeline(report))
    verification = report["verification"]
    if verification["disagreements"]:
        parts.append("<h2>Disagreements</h2><table><tr><th>frame</th><th>tile</th>"
                     "<th>workers</th><th>outcome</th><th>suspects</th></tr>")
        for check in verification["disagreements"]:
            parts.append(f"<tr><td>{check['frame']}</td><td>{check['tile']}</td>"
                         f"<td>{e(', '.join(check['workers']))}</td>"
                         f"<td>{e(str(check['outcome']))}</td>"
                         f"<td class='bad'>{e(', '.join(check['suspects']))}</td></tr>")
        parts.append("</table>")
    parts.append("<h2>Frames</h2><div class='sheet'>")
    for output in report["outputs"]:
        image = (thumbnails or {}).get(output["frame"])
        img = (f"<img alt='frame {output['frame']}' src='data:image/png;base64,"
               f"{base64.b64encode(image).decode()}'>" if image else "<div class='none'></div>")
        parts.append(f"<figure>{img}<figcaption>{output['frame']}: {e(output['name'])}<br>"
                     f"<code>{e(str(output['sha256'] or '')[:16])}</code></figcaption></figure>")
    parts.append("</div><h2>Calls</h2><table><tr><th>frame</th><th>tiles</th><th>call</th>"
                 "<th>worker</th><th>device</th><th>render s</th><th>busy s</th>"
                 "<th>Msamples/s</th><th>attempt</th><th>status</th><th>verification</th>"
                 "</tr>")
    for piece in report["pieces"]:
        rate = piece["samples_per_second"]
        frame, tiles, what = call_cells(piece)
        parts.append(f"<tr><td>{frame}</td><td>{tiles}</td>"
                     f"<td>{what}</td><td>{e(piece['worker'])}</td>"
                     f"<td>{e(str(piece['device']))}</td><td>{piece['render_seconds']:.2f}</td>"
                     f"<td>{piece['busy_seconds']:.2f}</td>"
                     f"<td>{'' if rate is None else f'{rate / 1e6:.2f}'}</td>"
                     f"<td>{piece['attempt']}</td><td>{e(piece['status'])}</td>"
                     f"<td>{e(piece['verification'])}</td></tr>")
    parts.append("</table></body></html>")
    return "\n".join(parts)


#: each kind of call, as a report names it
CALL_NAMES = {"render": "render", "check": "check", "finish": "finishing",
              "inspect": "inspection", "probe": "probe", "encode": "video encoding"}


def call_cells(piece: Mapping[str, Any]) -> tuple[str, str, str]:
    """``(frame, tiles, what)`` of a call as a table shows it: inspection names no frame,
    finishing and encoding no tile, a call that rendered several tiles lists them all."""
    kind = str(piece.get("kind") or "render")
    what = CALL_NAMES.get(kind, kind)
    if kind == "inspect":
        return "", "", what
    frame = str(piece.get("frame", ""))
    if kind in ("finish", "encode"):
        return frame, "", what
    tiles = [int(t) for t in piece.get("tiles") or []] or [int(piece.get("tile") or 0)]
    return frame, ", ".join(map(str, tiles)), what


def call_title(piece: Mapping[str, Any]) -> str:
    """A call in a line of words: ``render frame 3 tiles 0, 1``, ``finishing frame 3``,
    ``inspection``."""
    frame, tiles, what = call_cells(piece)
    many = "," in tiles
    return " ".join(filter(None, [what, f"frame {frame}" if frame else "",
                                  f"tile{'s' if many else ''} {tiles}" if tiles else ""]))


def _timeline(report: Mapping[str, Any]) -> str:
    """An SVG with one row per worker and one bar per call, coloured by kind."""
    pieces = [p for p in report["pieces"] if p["finished"] > p["started"] > 0]
    if not pieces:
        return ""
    start = min(p["started"] for p in pieces)
    span = max(max(p["finished"] for p in pieces) - start, 1e-6)
    workers = sorted({p["worker"] for p in pieces})
    width, row = 900, 22
    bars = []
    for piece in pieces:
        y = workers.index(piece["worker"]) * row
        x = 120 + (piece["started"] - start) / span * (width - 130)
        w = max((piece["finished"] - piece["started"]) / span * (width - 130), 1.0)
        colour = _COLOURS.get("failed" if piece["status"] != "ok" else piece["kind"], "#999999")
        label = html.escape(f"{call_title(piece)} {piece['busy_seconds']:.2f} s "
                            f"{piece['status']}")
        bars.append(f"<rect x='{x:.1f}' y='{y + 3}' width='{w:.1f}' height='{row - 6}' "
                    f"fill='{colour}'><title>{label}</title></rect>")
    names = "".join(f"<text x='0' y='{i * row + 15}'>{html.escape(w)}</text>"
                    for i, w in enumerate(workers))
    legend = " ".join(f"<span style='color:{c}'>■ {k}</span>" for k, c in _COLOURS.items())
    return (f"<h2>Timeline ({span:.1f} s)</h2><p>{legend}</p><svg class='timeline' "
            f"width='{width}' height='{len(workers) * row}'>{names}{''.join(bars)}</svg>")


#: the look of a report saved as a file (light)
_CSS = """body { font-family: sans-serif; margin: 1.5em; color: #222; }
td, th { border: 1px solid #ccc; }
.bad { color: #b22; }"""

#: what every report page has, whatever its look
_CSS_PARTS = """table { border-collapse: collapse; margin-bottom: 1em; font-size: 0.9em; }
td, th { padding: 2px 6px; text-align: left; } .bad { font-weight: bold; }
.sheet { display: flex; flex-wrap: wrap; gap: 8px; }
figure { margin: 0; font-size: 0.8em; } figure img, .none { width: 160px; }
.timeline text { font-size: 11px; fill: currentColor; }"""
