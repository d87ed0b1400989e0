"""``modelexport`` command line: one module per verb, errors as one line on stderr."""
from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import traceback

from modelexport.cli import analyze as analyze_verb
from modelexport.cli import compare as compare_verb
from modelexport.cli import diff as diff_verb
from modelexport.cli import export as export_verb
from modelexport.cli import report as report_verb
from modelexport.cli import sensitivity as sensitivity_verb
from modelexport.cli import transform as transform_verbs
from modelexport.cli import extract as extract_verb
from modelexport.cli import graphml as graphml_verb
from modelexport.cli import profile as profile_verb
from modelexport.cli import validate as validate_verb
from modelexport.cli import view as view_verb

VERBS = (export_verb, analyze_verb, validate_verb, compare_verb, diff_verb, report_verb, graphml_verb, view_verb,
         profile_verb, extract_verb, transform_verbs, sensitivity_verb)


class _Parser(argparse.ArgumentParser):
    """A usage mistake is a user error: one line and exit 1 (argparse's own exit 2 is ours for
    internal errors)."""

    def error(self, message: str):
        self.exit(1, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="modelexport",
        description="Export Hugging Face / PyTorch models to ONNX with every node tagged by its PyTorch module.",
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks and library logs")
    sub = parser.add_subparsers(dest="verb", metavar="COMMAND", required=True)
    for verb in VERBS:
        verb.register(sub)
    for verb_parser in dict.fromkeys(sub.choices.values()):
        # --debug works after the verb too (`modelexport diff A B --debug`); SUPPRESS keeps a
        # --debug given before the verb when the verb's parser does not see one.
        verb_parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                                 help="show full tracebacks and library logs")
    return parser


def _raise_on_sigterm(signum, frame):
    from modelexport.errors import Terminated

    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    global _PROGRAM
    _PROGRAM = argv is None
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if not args.debug:
            quiet_libraries()
    except KeyboardInterrupt:
        return _interrupted()
    from modelexport.errors import ModelExportError, Terminated

    # SIGTERM unwinds like Ctrl-C, so the staged output folder is removed on the way out.
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_on_sigterm)
    try:
        code = args.run(args) or 0
        sys.stdout.flush()  # a closed pipe shows here when the output was buffered
        return code
    except BrokenPipeError:
        return _closed_pipe()
    except ModelExportError as e:
        if args.debug:
            traceback.print_exc()
        cause = _signal_in_chain(e)
        if cause is not None:  # a library failure we worded, whose cause was the interrupt
            return _interrupted() if isinstance(cause, KeyboardInterrupt) else _terminated()
        print(f"modelexport: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return _interrupted()
    except Terminated:
        return _terminated()
    except Exception as e:
        from modelexport.errors import disk_error_message

        if _is_closed_pipe(e):
            return _closed_pipe()
        # Ctrl-C (or SIGTERM) that lands inside a library turns into the library's own error: an
        # extension module whose initialisation it interrupted raises "ImportError: initialization
        # failed" with the KeyboardInterrupt as its cause. It is still an interrupt.
        cause = _signal_in_chain(e)
        if cause is not None:
            if args.debug:
                traceback.print_exc()
            return _interrupted() if isinstance(cause, KeyboardInterrupt) else _terminated()
        disk = disk_error_message(e)
        if disk:  # a full or read-only disk is the user's to fix, not a bug
            print(f"modelexport: error: {disk}", file=sys.stderr)
            return 1
        if args.debug:
            traceback.print_exc()
        print(f"modelexport: internal error: {describe_failure(e)}", file=sys.stderr)
        return INTERNAL_ERROR


def run() -> int:
    """The ``modelexport`` command (console script and ``python -m modelexport``).

    Once ``main`` has returned, the outcome is decided and said: the process ends with that code
    and nothing else. Interpreter shutdown (joining torch's and ONNX Runtime's threads, their exit
    hooks, a second or so after an export) restores the default SIGINT action, so a Ctrl-C landing
    there killed the process (-2) after a complete export, or after "interrupted" had been printed
    (both seen: a CI run and 1 in 17 random-time interrupts under transformers 5). Later signals
    are ignored, the streams flushed, and the process ends without that shutdown."""
    code = main()
    _handled()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BrokenPipeError:  # the reader left: a normal end for output meant for a pipe
            pass
        except (OSError, ValueError) as e:  # a full disk or closed stream under a redirect
            if code == 0:
                code = 1
                print(f"modelexport: error: could not write the output: {e}", file=sys.__stderr__)
    os._exit(code)


# A bug of ours or of a library below us, not a refused input: tests and scripts can tell them apart.
INTERNAL_ERROR = 2


_PROGRAM = False  # main() runs as the `modelexport` process (not called by a caller in-process)


def _handled() -> None:
    """The interrupt is handled and the exit code decided: a signal still pending (or a second
    Ctrl-C) must not turn the exit into an unhandled KeyboardInterrupt, which Python ends by
    killing itself with SIGINT (-2 instead of 130). Only for the process itself: a caller of
    ``main([...])`` keeps its own handlers."""
    if _PROGRAM and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _interrupted() -> int:
    _handled()
    print(f"modelexport: interrupted; {_what_was_left()}", file=sys.stderr)
    return 130


def _terminated() -> int:
    _handled()
    print(f"modelexport: terminated; {_what_was_left()}", file=sys.stderr)
    return 143


def _what_was_left() -> str:
    from modelexport.folder.staging import completed

    if completed:  # the signal came after the output folder was swapped in, complete
        return "already written, complete: " + ", ".join(map(str, completed))
    return "nothing was written and existing files were left as they were"


def _signal_in_chain(e: BaseException) -> BaseException | None:
    """The KeyboardInterrupt or Terminated an exception was raised from (its cause or context)."""
    from modelexport.errors import Terminated

    seen: BaseException | None = e
    for _ in range(20):
        if seen is None:
            return None
        if isinstance(seen, (KeyboardInterrupt, Terminated)):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _is_closed_pipe(e: BaseException) -> bool:
    seen: BaseException | None = e
    for _ in range(10):
        if seen is None:
            return False
        if isinstance(seen, BrokenPipeError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _closed_pipe() -> int:
    """The reader of our output went away (``| head``): a normal end. Point stdout at /dev/null so
    the interpreter's final flush does not fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout is not a real file (tests capture it)
        pass
    return 0


def describe_failure(e: BaseException) -> str:
    """One line for an unexpected exception: its type and first line, and how to see more."""
    first = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
    return f"{type(e).__name__}: {first} (this is a bug; run with --debug for the traceback)"


def quiet_libraries() -> None:
    """The libraries below us are chatty (tracer warnings, Optimum's info logs): keep the
    terminal for our own progress and summary unless --debug."""
    from modelexport.quiet import silence_process

    silence_process()


if __name__ == "__main__":
    sys.exit(main())
