"""The farm-service commands of ``renderfarm``: serve, keys, submit, status, list, cancel,
pause, resume, priority, fetch, web-token.

Only ``serve`` imports Ray (through the service); the others need pyzmq alone.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from renderfarm.errors import InputError
from renderfarm.options import add_autoscale_options, autoscale_settings

logger = logging.getLogger(__name__)

#: the commands this module runs
COMMANDS = ("serve", "keys", "submit", "status", "list", "cancel", "pause", "resume",
            "priority", "fetch", "web-token", "report", "log", "requeue", "workers",
            "worker")


def add_commands(sub: Any, common: argparse.ArgumentParser, jobs: argparse.ArgumentParser,
                 farm: argparse.ArgumentParser) -> None:
    """Add the service commands to the ``renderfarm`` parser."""
    serve = sub.add_parser("serve", parents=[common], help="run the farm service",
                           description="Run the farm service: a job queue (SQLite) served over "
                           "ZeroMQ, rendering on a Ray cluster. Jobs survive a restart.")
    serve.add_argument("--bind", default="tcp://127.0.0.1:5555",
                       help="request address (default tcp://127.0.0.1:5555; events on the "
                       "next port)")
    serve.add_argument("--publish", help="event address (default: request port + 1)")
    serve.add_argument("--address", help="Ray cluster address ('auto', 'ray://head:10001'); "
                       "default: start Ray on this machine")
    serve.add_argument("--storage", help="folder or s3://bucket/prefix for uploaded files and "
                       "finished frames (default: STATE/storage)")
    serve.add_argument("--state", default="farm-state",
                       help="folder of the job database and pieces in flight "
                       "(default ./farm-state)")
    serve.add_argument("--server-key", help="the service's secret key file (.key_secret)")
    serve.add_argument("--clients", help="folder of the allowed clients' public keys (*.key)")
    serve.add_argument("--admins", help="folder of admins' public keys (*.key): they see and "
                       "act on every job (a client sees only its own)")
    serve.add_argument("--requests-per-second", type=float, default=200.0,
                       help="requests a client may send per second, bursts of twice as many "
                       "(0: no limit; default 200)")
    limits = serve.add_argument_group("limits (over one: a clear error, nothing created)")
    limits.add_argument("--max-frames-per-job", type=int, default=10_000, metavar="N")
    limits.add_argument("--max-tasks-per-job", type=int, default=100_000, metavar="N",
                        help="frames x tiles x sample chunks (default 100000)")
    limits.add_argument("--max-tasks-per-client", type=int, default=500_000, metavar="N",
                        help="tasks of one client's unfinished jobs together (default 500000)")
    limits.add_argument("--max-samples", type=int, default=65_536, metavar="N")
    limits.add_argument("--max-pixels", type=int, default=16384 * 16384, metavar="N",
                        help="width x height of a frame (default 16384x16384)")
    limits.add_argument("--task-timeout", type=float, default=3600.0, metavar="SECONDS",
                        help="for jobs that set none (default 3600; 0: none)")
    limits.add_argument("--max-stored-gb-per-client", type=float, default=100.0,
                        metavar="GB", help="new files one client may store (default 100)")
    serve.add_argument("--insecure-loopback", action="store_true",
                       help="run without keys (only on loopback addresses)")
    serve.add_argument("--workers", type=int, help="workers in the pool")
    add_autoscale_options(serve)
    serve.add_argument("--no-store-node-pieces", dest="store_node_pieces",
                       action="store_false",
                       help="with pieces on the nodes: do not have each node also write its "
                       "pieces into the state folder (a node does when it sees that folder, a "
                       "shared file system, so that a restart renders only what was not "
                       "finished); halves the file server's writes, and a restart renders "
                       "the unfinished frames' tiles again")
    serve.add_argument("--max-running", type=int, default=4,
                       help="jobs started at once; they share the workers by priority "
                       "(default 4)")
    serve.add_argument("--permit-scripts", action="store_true",
                       help="let jobs run Python embedded in their files when they ask")
    serve.add_argument("--http", help="HOST:PORT of the web app (jobs, their frames, logs "
                       "and reports; cancel, pause, resume, priority, requeue) and the HTTP "
                       "API /api/v1 (with keys it asks for a login and may serve any "
                       "address; without keys loopback only)")
    serve.add_argument("--max-bundle-gb", type=float, default=64.0,
                       help="the largest job (a .blend and its files) accepted, in GiB "
                       "(default 64)")
    trust = serve.add_argument_group("verification and cost")
    trust.add_argument("--verify", type=float, default=0.0, metavar="SHARE",
                       help="share of pieces rendered again on another worker and compared, "
                       "for jobs that do not say (0.1: a tenth; default 0)")
    trust.add_argument("--verify-tolerance", type=float, default=0.0, metavar="VALUE",
                       help="per-value difference two renders of a piece may have and agree "
                       "(default 0: bit for bit, exact for CPU workers)")
    serve.add_argument("--notify", metavar="URL", help="POST every job's summary as JSON to "
                       "this http(s) URL when it ends")
    serve.add_argument("--notify-allow", action="append", default=[], metavar="PREFIX",
                       help="URL prefix a client's submit --notify may start with "
                       "(repeatable; default none: clients cannot make the farm call "
                       "addresses)")
    trust.add_argument("--price", action="append", default=[], metavar="DEVICE=PRICE",
                       help="price per device-hour for job reports: CPU=PRICE is per "
                       "core-hour, a GPU by its model ('NVIDIA A10=1.10'), '*=PRICE' for any "
                       "other (repeatable)")

    keys = sub.add_parser("keys", parents=[common], help="create a CurveZMQ key pair",
                          description="Create NAME.key (public: give it to the other side) and "
                          "NAME.key_secret (keep it) in FOLDER.")
    keys.add_argument("folder", help="where to write the keys")
    keys.add_argument("--name", default="client", help="file name (default 'client'; "
                      "'server' for the service)")

    submit = sub.add_parser("submit", parents=[common, jobs, farm],
                            help="send a .blend to the farm service",
                            description="Upload a .blend and queue a job on the farm service.")
    submit.add_argument("blend", help="the .blend file")
    submit.add_argument("--priority", type=int, default=0, help="higher first (default 0)")
    submit.add_argument("--wait", action="store_true",
                        help="follow the job to its end and fetch its frames")
    submit.add_argument("--fetch-to", default=None,
                        help="folder for the frames with --wait (default: the -o folder, "
                        "or render/)")
    submit.add_argument("--json", action="store_true", help="print JSON")
    submit.add_argument("--estimate", action="store_const", const="first",
                        help="probe a few frames at low samples first: the job's predicted "
                        "time and cost are in its report (renderfarm report), then it renders")
    submit.add_argument("--estimate-only", dest="estimate", action="store_const",
                        const="only", help="probe and predict only; render nothing")
    submit.add_argument("--after", metavar="JOB[,JOB]",
                        help="start once these jobs of the farm are done (held, saying why, "
                        "while one of them failed or was cancelled)")
    submit.add_argument("--per-frame", action="store_true",
                        help="with --after: frame N waits for frame N of those jobs only")
    submit.add_argument("--budget", type=float, metavar="COST",
                        help="render only if the estimate costs at most COST at the farm's "
                        "prices (implies --estimate)")

    for name, text in (("status", "a job's state and progress"), ("cancel", "cancel a job"),
                       ("pause", "start no more tasks of a job"),
                       ("resume", "resume a paused job")):
        cmd = sub.add_parser(name, parents=[common, farm], help=text)
        cmd.add_argument("job", help="the job id")
        cmd.add_argument("--json", action="store_true", help="print JSON")
    listing = sub.add_parser("list", parents=[common, farm], help="the farm's jobs")
    listing.add_argument("--state", action="append", help="only jobs in this state "
                         "(repeatable)")
    listing.add_argument("--json", action="store_true", help="print JSON")
    priority = sub.add_parser("priority", parents=[common, farm], help="re-prioritise a job")
    priority.add_argument("job", help="the job id")
    priority.add_argument("priority", type=int, help="the new priority (higher first)")
    priority.add_argument("--json", action="store_true", help="print JSON")
    fetch = sub.add_parser("fetch", parents=[common, farm], help="download a job's frames")
    fetch.add_argument("job", help="the job id")
    fetch.add_argument("folder", help="where to write them")
    token = sub.add_parser(
        "web-token", parents=[common, farm], help="print a token for the status page",
        description="Print this client's token for the farm's status page (serve --http), "
        "asked of the farm with this client's keys. With NAME, the farm's administrator "
        "computes NAME's token on the farm's machine instead, from --server-key (the "
        "service's .key_secret) and the --clients/--admins folders.")
    token.add_argument("name", nargs="?", help="a client's name (its key file's stem)")
    token.add_argument("--clients", help="with NAME: the service's --clients folder")
    token.add_argument("--admins", help="with NAME: the service's --admins folder")
    report = sub.add_parser(
        "report", parents=[common, farm], help="a job's report: cost, verification, hashes",
        description="Show a job's report: device-seconds and cost per piece, worker, device "
        "and job, what verification found, and each output's SHA-256. --check FOLDER "
        "tells which delivered files differ from what the farm wrote (exit 4 if any).")
    report.add_argument("job", help="the job id")
    report.add_argument("--json", action="store_true", help="print the whole report as JSON")
    report.add_argument("--html", metavar="OUT", help="write the report as an HTML page "
                        "(timeline per worker, contact sheet of the frames)")
    report.add_argument("--check", metavar="FOLDER", help="compare the files in FOLDER with "
                        "the outputs' SHA-256")
    requeue = sub.add_parser(
        "requeue", parents=[common, farm], help="render frames of an ended job again",
        description="Render frames of a job that ended (done, failed or cancelled) again, "
        "into the same outputs: by default the frames it did not write.")
    requeue.add_argument("job", help="the job id")
    requeue.add_argument("--frames", help="these frames (e.g. '3,7-9'), written or not")
    requeue.add_argument("--failed", action="store_true",
                         help="the frames it did not write (the default)")
    requeue.add_argument("--json", action="store_true", help="print JSON")
    workers = sub.add_parser("workers", parents=[common, farm], help="the farm's workers",
                             description="The farm's workers: node, device, state (idle, "
                             "busy, starting, suspect, disabled), tasks done, failures.")
    workers.add_argument("--json", action="store_true", help="print JSON")
    worker = sub.add_parser("worker", parents=[common, farm],
                            help="take a worker out or put it back (admins)",
                            description="Disable a worker (it gets no tasks; the one it "
                            "runs finishes) or enable it again, which also clears a "
                            "verification's suspicion of it. Needs an admin key.")
    worker.add_argument("action", choices=("disable", "enable"))
    worker.add_argument("worker_id", help="the worker, as `renderfarm workers` names it")
    worker.add_argument("--reason", help="why (shown in the worker list)")
    worker.add_argument("--json", action="store_true", help="print JSON")
    log = sub.add_parser(
        "log", parents=[common, farm], help="what Blender printed for a job's tasks",
        description="Show what Blender printed for each task of a job: the last lines of a "
        "task that succeeded, all of a failed one's.")
    log.add_argument("job", help="the job id")
    log.add_argument("--frame", type=int, help="only this frame's tasks")
    log.add_argument("--failed", action="store_true", help="only failed tasks")
    log.add_argument("--json", action="store_true", help="print JSON")


def run(args: argparse.Namespace) -> int:
    """Run one service command."""
    if args.command == "serve":
        return _serve(args)
    if args.command == "keys":
        return _keys(args)
    if args.command == "web-token" and args.name:
        return _web_token_of(args)
    import faulthandler

    from renderfarm.client import FarmClient
    from renderfarm.report import call_title

    if args.command not in ("submit", "fetch"):
        # a client command is a few round trips: should one ever hang inside ZeroMQ, print
        # where and exit rather than wait forever
        faulthandler.dump_traceback_later(max(60.0, 4 * args.reply_timeout), exit=True)
    with FarmClient(args.farm, server_key=args.server_key, client_key=args.client_key,
                    timeout=args.reply_timeout) as client:
        if args.command == "submit":
            return _submit(args, client)
        if args.command == "list":
            jobs = client.list(args.state)
            if args.json:
                print(json.dumps(jobs, indent=2))
            else:
                for job in jobs:
                    print(format_job(job))
            return 0
        if args.command == "web-token":
            print(client.web_token())
            if not args.quiet:
                print("log in on the status page with it, or send it as 'Authorization: "
                      "Bearer TOKEN'", file=sys.stderr)
            return 0
        if args.command == "fetch":
            paths = client.fetch_outputs(args.job, args.folder)
            for path in paths.values():
                print(path)
            for name in sorted(client.status(args.job).get("extra_outputs") or {}):
                print(Path(args.folder) / name)
            return 0
        if args.command == "report":
            return _report(args, client)
        if args.command == "requeue":
            if args.frames and args.failed:
                raise InputError("give --frames or --failed, not both")
            reply, _ = client.request("requeue", job_id=args.job, failed=args.failed,
                                      **({"frames": args.frames} if args.frames else {}))
            print(json.dumps(reply["job"], indent=2) if args.json else
                  f"{format_job(reply['job'])} — frames again: "
                  f"{', '.join(map(str, reply['frames'])) or 'all'}")
            return 0
        if args.command == "workers":
            listed = client.request("workers")[0]["workers"]
            if args.json:
                print(json.dumps(listed, indent=2))
            for entry in [] if args.json else listed:
                reason = f" — {entry['reason']}" if entry.get("reason") else ""
                print(f"{entry['worker']:<10} {entry['state']:<9} {entry['device'] or '-':<22}"
                      f" tasks {entry['tasks_done']:<5} calls {entry.get('calls', 0):<5} "
                      f"failures {entry['failures']:<3} "
                      f"node {str(entry['node'])[:12]}"
                      + (f" blender {','.join(entry['blenders'])}" if entry.get("blenders")
                         else "")
                      + (f" now {entry['current']}" if entry.get("current") else "") + reason)
            return 0
        if args.command == "worker":
            fields: dict[str, Any] = {"worker_id": args.worker_id,
                                      "enabled": args.action == "enable"}
            if args.reason:
                fields["reason"] = args.reason
            entry = client.request("worker", **fields)[0]["worker"]
            print(json.dumps(entry, indent=2) if args.json else
                  f"{entry['worker']} {entry['state']}")
            return 0
        if args.command == "log":
            logs = client.log(args.job, args.frame, args.failed)
            if args.json:
                print(json.dumps(logs, indent=2))
                return 0
            for entry in logs:
                status = "ok" if entry["ok"] else f"FAILED: {entry['error'] or ''}"
                print(f"== {call_title(entry)} attempt {entry['attempt']} on "
                      f"{entry['worker']}: {status}")
                for line in entry["log"].splitlines():
                    print(f"   {line}")
            if not logs:
                print("no task has logged yet" + (f" for frame {args.frame}"
                                                   if args.frame is not None else ""),
                      file=sys.stderr)
            return 0
        if args.command == "priority":
            job = client.set_priority(args.job, args.priority)
        else:
            job = getattr(client, args.command)(args.job)
        print(json.dumps(job, indent=2) if args.json else format_job(job))
        return 4 if args.command == "status" and job["state"] == "failed" else 0


def format_job(job: dict[str, Any]) -> str:
    """One line about a job."""
    elapsed = f" {job['elapsed']:.0f}s" if job.get("elapsed") is not None else ""
    error = f" — {job['error']}" if job.get("error") else ""
    if job.get("farm") == "recovering":
        error += (f" (the farm is recovering: {job.get('farm_reason') or 'Ray failed'}; "
                  "the job resumes)")
    eta = (f" ETA {_duration(job['eta'])}" if job.get("eta") is not None
           and job.get("state") == "running" else "")
    if job.get("waiting"):
        error += f" — {job['waiting']}"
    return (f"{job['job_id']}  {job['state']:<9} p{job['priority']:<3} "
            f"tasks {job['tasks_done']}/{job['tasks_total']} frames "
            f"{job['frames_done']}/{job['frames_total']}{elapsed}{eta}  {job['name']}{error}")


def _duration(seconds: float) -> str:
    """``75`` -> ``1m15s``."""
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return (f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes
            else f"{secs}s")


def _serve(args: argparse.Namespace) -> int:
    from renderfarm.job import check_verify
    from renderfarm.notify import check_url
    from renderfarm.report import parse_prices
    from renderfarm.server.service import ServiceConfig, serve
    from renderfarm.server.transport import read_key

    check_verify(args.verify)
    server_key = read_key(args.server_key, secret=True) if args.server_key else None
    config = ServiceConfig(
        bind=args.bind, publish=args.publish, address=args.address, storage=args.storage,
        state=Path(args.state), server_key=server_key,
        clients=Path(args.clients) if args.clients else None,
        admins=Path(args.admins) if args.admins else None,
        requests_per_second=args.requests_per_second,
        max_frames_per_job=args.max_frames_per_job, max_tasks_per_job=args.max_tasks_per_job,
        max_tasks_per_client=args.max_tasks_per_client, max_samples=args.max_samples,
        max_pixels=args.max_pixels, task_timeout=args.task_timeout or None,
        max_stored_bytes_per_client=int(args.max_stored_gb_per_client * 1024**3),
        insecure_loopback=args.insecure_loopback, workers=args.workers,
        **autoscale_settings(args), store_node_pieces=args.store_node_pieces,
        max_running=args.max_running, permit_scripts=args.permit_scripts, http=args.http,
        max_bundle_bytes=int(args.max_bundle_gb * 1024**3), verify=args.verify,
        verify_tolerance=args.verify_tolerance, prices=parse_prices(args.price),
        notify=check_url(args.notify) if args.notify else None,
        notify_allow=tuple(args.notify_allow))
    serve(config, say=lambda line: print(f"renderfarm serve: {line}", file=sys.stderr,
                                          flush=True))
    return 0


def _keys(args: argparse.Namespace) -> int:
    from renderfarm.server.transport import create_keys, read_key

    if not args.name.replace("-", "").replace("_", "").isalnum():
        raise InputError(f"--name {args.name!r}: use letters, digits, '-' and '_'")
    public, secret = create_keys(Path(args.folder), args.name)
    print(f"public key {read_key(str(public)).public} in {public}")
    print(f"secret key in {secret} (keep it private)")
    return 0


def _web_token_of(args: argparse.Namespace) -> int:
    """Print the status-page token of the client ``args.name``, computed from the service's
    secret key and its key folders (no farm is asked)."""
    from renderfarm.server.keyring import KeyRing, web_token
    from renderfarm.server.transport import read_key

    if not args.server_key or not args.clients:
        raise InputError("web-token NAME needs the service's --server-key (its .key_secret) "
                         "and its --clients folder (and --admins for an admin)")
    server = read_key(args.server_key, secret=True)
    clients = Path(args.clients)
    if not clients.is_dir():
        raise InputError("--clients must be the service's folder of clients' public keys",
                         path=str(clients))
    admins = Path(args.admins) if args.admins else None
    callers = [c for c in KeyRing(clients, admins).callers() if c.name == args.name]
    if not callers:
        raise InputError(f"no key named {args.name!r} in --clients or --admins "
                         f"({args.name}.key)", path=str(clients))
    for caller in callers:  # a name may have a client key and an admin key
        print(web_token(server.secret, caller.key))
        if len(callers) > 1 and not args.quiet:
            print(f"  (the token above is {caller.name}'s "
                  f"{'admin' if caller.admin else 'client'} key's)", file=sys.stderr)
    return 0


def _local_output(output: str, blend: Path) -> Path:
    """Where ``-o`` points on this machine: ``//`` is the .blend's folder, as in Blender."""
    if output.startswith("//"):
        return blend.resolve().parent / output[2:]
    return Path(output)


def _report(args: argparse.Namespace, client: Any) -> int:
    from renderfarm.report import check_folder, summary_lines

    if args.html:
        report, page = client.report_html(args.job)
        Path(args.html).parent.mkdir(parents=True, exist_ok=True)
        Path(args.html).write_bytes(page)
    else:
        report = client.report(args.job)
    if args.check:
        folder = Path(args.check)
        if not folder.is_dir():
            raise InputError("--check needs the folder the job's files were delivered to",
                             path=str(folder))
        rows = check_folder(report, folder)
        bad = [r for r in rows if r["status"] != "ok"]
        if args.json:
            print(json.dumps(rows, indent=2))
        else:
            for row in rows:
                print(f"{row['status']:<8} {row['name']}" + (
                    f"  (expected {str(row['expected'])[:16]}…, found "
                    f"{str(row['found'])[:16]}…)" if row["status"] == "differs" else ""))
            print(f"{len(rows) - len(bad)} of {len(rows)} file(s) as the farm wrote them",
                  file=sys.stderr)
        return 4 if bad else 0
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for line in summary_lines(report):
            print(line)
        for output in report["outputs"]:
            print(f"  {output['sha256'] or '(no hash)'}  {output['name']}")
        if args.html:
            print(f"report written to {args.html}", file=sys.stderr)
    return 0


def _spec(args: argparse.Namespace) -> dict[str, Any]:
    from dataclasses import replace

    from renderfarm.options import job_spec

    # a file name only (the farm chooses the folder); None: the scene's own names and format
    output = Path(args.output).name if args.output else None
    spec = job_spec(args, output)
    if getattr(args, "after", None):
        spec = replace(spec, after=tuple(j.strip() for j in args.after.split(",") if j.strip()),
                       after_frames=args.per_frame)
    elif getattr(args, "per_frame", False):
        raise InputError("--per-frame goes with --after JOB: the jobs whose frames to wait for")
    data = spec.to_dict()
    for name in ("blend_file", "files", "project", "bundle"):  # the client's business
        data.pop(name)
    return data


def _submit(args: argparse.Namespace, client: Any) -> int:
    blend = Path(args.blend)
    if not blend.is_file():
        raise InputError("no such file; give the .blend to render", path=str(blend))
    if args.files != "bundle":
        raise InputError("a farm service takes bundles only (its workers do not see this "
                         "disk); submit without --files shared", path=str(blend))
    spec = _spec(args)
    if args.wait:
        client.subscribe()
    job_id = client.submit(blend, spec, priority=args.priority, project=args.project)
    sent = client.last_transfer
    if not args.quiet and not args.json:
        had = sent["sent_files"] < sent["bundle_files"]
        print(f"{job_id}: sent {sent['sent_files']} of {sent['bundle_files']} file(s), "
              f"{sent['sent_bytes']} of {sent['bundle_bytes']} bytes"
              + (" (the farm had the rest)" if had else ""), file=sys.stderr)
    if not args.wait:
        print(json.dumps({"job_id": job_id, "transfer": sent}) if args.json else job_id)
        return 0
    started = time.monotonic()
    last = ""
    for event in client.events(job_id):
        if event.get("kind") in ("estimate", "warning") and not args.quiet and not args.json:
            print(f"{job_id} {event.get('message')}", file=sys.stderr)
        line = (f"{event.get('state', '')} tasks {event.get('tasks_done', 0)}/"
                f"{event.get('tasks_total', 0)} frames {event.get('frames_done', 0)}/"
                f"{event.get('frames_total', 0)}")
        if line != last and not args.quiet and not args.json:
            print(f"{job_id} {line}", file=sys.stderr)
            last = line
    job = client.status(job_id)
    folder = args.fetch_to or (str(_local_output(args.output, blend).parent) if args.output
                               else "render")
    outputs = (client.fetch_outputs(job_id, folder)
               if job["outputs"] or job.get("extra_outputs") else {})
    others = len(job.get("extra_outputs") or {})  # views, File Output nodes', a video
    if args.json:
        print(json.dumps({**job, "fetched": {str(k): str(v) for k, v in outputs.items()},
                          "transfer": sent}, indent=2))
    elif not args.quiet:
        print(f"{job_id} {job['state']} in {time.monotonic() - started:.1f} s: "
              f"{len(outputs)} frame(s)" + (f" and {others} other file(s)" if others else "")
              + f" in {folder}" + (f" — {job['error']}"
                                                         if job.get("error") else ""))
    return {"done": 0, "cancelled": 130}.get(job["state"], 4)
