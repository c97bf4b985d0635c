"""fastvae's messages go through `logging`, to the `fastvae` logger (and its children, e.g. `fastvae.train`).

A library does not configure logging for its user, with one exception kept from before: while a Trainer with
`verbose=True` (the default) runs `fit()`, and its messages would otherwise go nowhere (no handler on the
`fastvae` logger or the root logger), `console_output()` attaches `console_handler()`, which writes whole lines
to the current `sys.stdout` (through tqdm, so a progress bar on stderr is not torn). Configure logging yourself
and fastvae uses your handlers.
Levels: INFO for the epoch lines and the test metrics, DEBUG for details (which kernel each op runs),
WARNING for what needs attention. `fastvae train --quiet` sets WARNING, `--verbose` DEBUG.

Progress: `progress_bar()` is a tqdm bar when stderr is a terminal; otherwise (a log file, CI) a `LineProgress`
that logs a whole line at every tenth of the epoch instead of carriage-return fragments.
"""
from __future__ import annotations

import contextlib
import logging
import sys

LOGGER_NAME = "fastvae"
logger = logging.getLogger(LOGGER_NAME)


class _CurrentStdout(logging.Handler):
    """Writes each record as one line to whatever sys.stdout is when it is emitted (a handler that kept the
    stream it was created with would write to a replaced or closed one: pytest's capture, a redirect)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=sys.stdout)
        except Exception:  # logging must never raise into training
            self.handleError(record)


_console: logging.Handler | None = None


def console_handler() -> logging.Handler:
    """fastvae's own console handler (one per process): plain messages, INFO and above by default."""
    global _console
    if _console is None:
        _console = _CurrentStdout()
        _console.setFormatter(logging.Formatter("%(message)s"))
    return _console


@contextlib.contextmanager
def console_output(application: bool = False):
    """While in this block, show fastvae's INFO messages on stdout, unless logging already has somewhere to put
    them (a handler on the `fastvae` logger or the root logger: the user's configuration wins).

    `application=True` (the command line, which is the program): show them on stdout in any case, and only
    there (not also through the root logger's handlers)."""
    configured = logger.handlers or logging.getLogger().handlers
    if console_handler() in logger.handlers or (configured and not application):
        yield
        return
    handler = console_handler()
    logger.addHandler(handler)
    level, propagate = logger.level, logger.propagate
    if level == logging.NOTSET:
        logger.setLevel(logging.INFO)
    if application:
        logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate


def set_level(quiet: bool = False, verbose: bool = False) -> None:
    """The command line's --quiet (WARNING) / --verbose (DEBUG); neither: INFO."""
    if quiet and verbose:
        raise ValueError("conflicting options: --quiet and --verbose")
    logger.setLevel(logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO)


class LineProgress:
    """The part of tqdm's interface the trainer uses, writing whole log lines at every tenth of `total`."""

    def __init__(self, total: int, initial: int = 0, desc: str = ""):
        self.total, self.n, self.desc = max(int(total), 1), int(initial), desc
        self._postfix = ""
        self._next_tenth = self.n * 10 // self.total + 1

    def update(self, n: int = 1) -> None:
        self.n += n
        tenth = self.n * 10 // self.total
        if tenth >= self._next_tenth:
            self._next_tenth = tenth + 1
            logger.info("%s: %d/%d (%d%%)%s", self.desc, self.n, self.total, 100 * self.n // self.total,
                        self._postfix)

    def set_postfix(self, **values) -> None:
        self._postfix = "  " + " ".join(f"{key}={value}" for key, value in values.items())

    def close(self) -> None:
        pass


def progress_bar(total: int, initial: int, desc: str):
    """A tqdm bar on a terminal, else a LineProgress."""
    if sys.stderr.isatty():
        from tqdm import tqdm

        return tqdm(total=total, initial=initial, leave=False, dynamic_ncols=True, file=sys.stderr, desc=desc)
    return LineProgress(total, initial, desc)
