"""Structured, quiet-by-default logging shared by the CLI, the operator and the trainer."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any

_RESERVED = set(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg and any ``extra=`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _RESERVED and not key.startswith("_"):
                payload[key] = value
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str)


def setup_logging(level: str | None = None, json_format: bool | None = None) -> None:
    """Configure the root logger once.

    Defaults: WARNING (quiet) unless ``TAC2SOL_LOG_LEVEL`` says otherwise; JSON lines when
    ``TAC2SOL_LOG_FORMAT=json`` (what the images set), plain text on a terminal.
    """
    level = (level or os.environ.get("TAC2SOL_LOG_LEVEL") or "WARNING").upper()
    if json_format is None:
        json_format = os.environ.get("TAC2SOL_LOG_FORMAT", "text").lower() == "json"
    handler = logging.StreamHandler(sys.stderr)
    if json_format:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # HTTP clients log every request at INFO (the operator makes one per pod poll): their warnings
    # only, unless DEBUG.
    for noisy in ("httpx", "httpx2", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if level == "DEBUG" else logging.WARNING)
