"""A real stack for the TypeScript SDK's tests (``clients/typescript/test``), run by them as
``python -m tests.ts_stack`` from the repository root.

Starts :class:`shared.topology.LocalTopology` — embedded Redis, two gateways behind HAProxy,
an agent runner with the fixture agents of ``tests/agents/models.toml``, the metrics
collector — in a private temporary folder, then prints one JSON line::

    {"url": <HAProxy's WebSocket URL>, "gateways": [<each gateway's URL>], "token": <admin JWT>}

and answers one JSON command per stdin line with one JSON line:

* ``{"cmd": "token", "user": "alice", "roles": ["operator"], "ttl": 60}`` → ``{"token": …}``
* ``{"cmd": "kill_gateway", "gatewayId": …}`` → ``{"killed": <index>}`` (SIGKILL)
* ``{"cmd": "restart_gateway", "index": i}`` → ``{"restarted": i, "gatewayId": …}``
* ``{"cmd": "forget_session", "sessionId": …}`` → ``{"forgotten": <1 or 0>}`` (as if it
  had expired)

Everything stops (and the folder is removed) on stdin EOF, SIGTERM or SIGINT; nothing
outlives this process (the topology's services die with it).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

import redis

from shared.keys import Keys
from shared.tokens import mint_token
from shared.topology import LocalTopology
from tests.helpers import AGENTS_DIR


def _answer(topology: LocalTopology, command: dict[str, Any]) -> dict[str, Any]:
    match command.get("cmd"):
        case "token":
            roles = tuple(command.get("roles", ["admin"]))
            ttl = int(command.get("ttl", 3600))
            return {
                "token": mint_token(topology.jwt_secret, command["user"], roles=roles, ttl_s=ttl)
            }
        case "kill_gateway":
            index = topology.gateway_index(command["gatewayId"])
            topology.kill_gateway(index)
            return {"killed": index}
        case "restart_gateway":
            index = int(command["index"])
            topology.restart_gateway(index)
            return {"restarted": index, "gatewayId": topology.gateway_ids[index]}
        case "forget_session":
            keys = Keys(os.environ.get("TEAMDASH_REDIS_PREFIX", "td"))  # the topology's
            with redis.Redis.from_url(topology.redis_url) as client:
                return {"forgotten": client.delete(keys.session(command["sessionId"]))}
    return {"error": f"unknown command {command!r}"}


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="teamdash-ts-"))
    env = {
        "TEAMDASH_STATE_DIR": str(work / "state"),
        "TEAMDASH_MODELS_FILE": str(AGENTS_DIR / "models.toml"),
        "TEAMDASH_WORKSPACE_ROOT": str(work / "workspaces"),
        "TEAMDASH_CURSOR_FLUSH_INTERVAL_S": "0.1",
        "TEAMDASH_METRICS_INTERVAL_S": "0.5",
        # Short, so the heartbeat test sees several pings answered.
        "TEAMDASH_HEARTBEAT_INTERVAL_S": "1",
    }
    topology = LocalTopology(2, env=env, log_dir=work / "logs", start_timeout_s=60)

    def stop(signum: int, frame: object) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        topology.start()
        token = mint_token(topology.jwt_secret, "ts-admin", roles=("admin",))
        urls = [topology.gateway_url(i) for i in range(topology.gateways)]
        print(json.dumps({"url": topology.lb_url, "gateways": urls, "token": token}), flush=True)
        for line in sys.stdin:
            if line.strip():
                print(json.dumps(_answer(topology, json.loads(line))), flush=True)
    finally:
        topology.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
