"""One place where a command starts twisted.logger output, as text or JSON lines."""

import sys

from twisted.logger import (
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    PredicateResult,
    globalLogBeginner,
    jsonFileLogObserver,
    textFileLogObserver,
)

LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("debug", "info", "warn", "error")


def not_the_reactors_farewell(event):
    """Drops the reactor's "Main loop terminated.": a one-shot command's output ends with
    its own answer, and a service's with its own stopping line."""
    if (event.get("log_namespace") == "twisted.internet.base"
            and event.get("log_format") == "Main loop terminated."):
        return PredicateResult.no
    return PredicateResult.maybe


def start_logging(log_format="text", level="info", stream=None):
    """Send every twisted.logger event at or above level to stream (stderr by default)."""
    stream = stream or sys.stderr
    if log_format == "json":
        observer = jsonFileLogObserver(stream, recordSeparator="")
    else:
        observer = textFileLogObserver(stream)
    predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.levelWithName(level))
    globalLogBeginner.beginLoggingTo(
        [FilteringLogObserver(observer, [not_the_reactors_farewell, predicate])],
        redirectStandardIO=False
    )


def add_logging_options(parser):
    parser.add_argument(
        "--log-format", choices=LOG_FORMATS, default="text",
        help="log as human-readable text (default) or as JSON lines",
    )
    parser.add_argument(
        "--log-level", choices=LOG_LEVELS, default="info", help="least severe level logged",
    )
