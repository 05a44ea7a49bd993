"""Send a shot to a running `renderfarm serve`, follow it, and download its frames.

    python examples/submit_to_farm.py shot.blend --farm tcp://head:5555 \
        --server-key keys/server.key --client-key ~/.renderfarm/alice.key_secret

Needs only pyzmq on this machine (no Ray, no Blender): the farm renders.
"""

from __future__ import annotations

import argparse
import sys

from renderfarm.client import FarmClient
from renderfarm.errors import RenderFarmError


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("blend")
    parser.add_argument("--farm", default="tcp://127.0.0.1:5555")
    parser.add_argument("--server-key", help="the farm's public key (none: a loopback farm "
                        "started with --insecure-loopback)")
    parser.add_argument("--client-key", help="this client's .key_secret file")
    parser.add_argument("--frames", default="1-4")
    parser.add_argument("--out", default="render")
    args = parser.parse_args()
    try:
        with FarmClient(args.farm, server_key=args.server_key,
                        client_key=args.client_key) as farm:
            farm.subscribe()  # before submitting, so no event is missed
            job_id = farm.submit(args.blend, {"frames": args.frames, "tiles": [0, 0],
                                              "output": "shot_####.exr"}, priority=1)
            for event in farm.events(job_id):
                print(f"{event['kind']:<14} {event.get('tasks_done')}/"
                      f"{event.get('tasks_total')} tasks", event.get("message", ""))
            job = farm.status(job_id)
            frames = farm.fetch_outputs(job_id, args.out)
    except RenderFarmError as exc:
        print(f"error: {exc.one_line()}", file=sys.stderr)
        return exc.exit_code
    print(f"{job_id}: {job['state']}, {len(frames)} frame(s) in {args.out}")
    return 0 if job["state"] == "done" else 4


if __name__ == "__main__":
    sys.exit(main())
