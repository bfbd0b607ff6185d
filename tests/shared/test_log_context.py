"""Log records carry the ids bound to their task, in text and JSON, and DEBUG=ws:* turns on
the gateway's verbose logs."""

from __future__ import annotations

import asyncio
import io
import json
import logging

from shared.logs import JsonFormatter, TextFormatter, bind, configure_logging, context_with


def _capture(formatter: logging.Formatter) -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    logger = logging.getLogger(f"test.ctx.{id(stream)}")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger, stream


async def test_ids_bound_in_a_task_reach_json_and_text_logs() -> None:
    json_log, json_out = _capture(JsonFormatter("gateway"))
    text_log, text_out = _capture(TextFormatter("%(message)s"))

    async def connection() -> None:
        bind(connection_id="c1", user_id="alice")
        json_log.info("hello")
        text_log.info("hello")

    await asyncio.create_task(connection())
    await asyncio.create_task(asyncio.sleep(0), context=context_with(agent_id="a1"))
    doc = json.loads(json_out.getvalue())
    assert doc["connection_id"] == "c1" and doc["user_id"] == "alice" and doc["msg"] == "hello"
    assert text_out.getvalue().strip() == "hello [connection=c1 user=alice]"
    json_log.info("outside")  # nothing leaked out of the task
    assert "connection_id" not in json.loads(json_out.getvalue().splitlines()[-1])


def test_debug_ws_star_turns_on_gateway_debug_logs() -> None:
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    try:
        configure_logging("gateway", debug="ws:*")
        assert logging.getLogger("ws.conn").isEnabledFor(logging.DEBUG)
        assert logging.getLogger("ws.auth").isEnabledFor(logging.DEBUG)
        assert not logging.getLogger("runner").isEnabledFor(logging.DEBUG)
        configure_logging("gateway", debug="ws:auth")
        logging.getLogger("ws").setLevel(logging.NOTSET)
        assert logging.getLogger("ws.auth").isEnabledFor(logging.DEBUG)
        assert not logging.getLogger("ws.conn").isEnabledFor(logging.DEBUG)
    finally:
        for name in ("ws", "ws.auth", "websockets", "asyncio"):
            logging.getLogger(name).setLevel(logging.NOTSET)
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
