"""The `segadapt` command. Thin: parse options, call the pipeline, print results to stdout.

Exit codes: 0 success, 1 data/runtime error, 2 usage error. Expected errors print one line to
stderr, no traceback (set SEGADAPT_DEBUG=1 to see one)."""

from __future__ import annotations

import os
import sys

import typer

from segadapt import __version__
from segadapt.cli import (export_cmds, import_cmds, infer_cmds, prepare_cmds, train_cmds, translator_cmds,
                          visualize_cmds)
from segadapt.errors import SegadaptError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Domain-adaptive semantic segmentation: prepare-data | warmup | pseudo-label | self-train | "
                       "evaluate | predict | export | visualize | train-translator | import-checkpoint")

app.add_typer(prepare_cmds.app, name="prepare-data")
app.command("warmup", no_args_is_help=True)(train_cmds.warmup)
app.command("self-train", no_args_is_help=True)(train_cmds.self_train)
app.command("train-translator", no_args_is_help=True)(translator_cmds.train_translator)
app.command("pseudo-label", no_args_is_help=True)(infer_cmds.pseudo_label)
app.command("evaluate", no_args_is_help=True)(infer_cmds.evaluate)
app.command("export", no_args_is_help=True)(export_cmds.export)
app.command("predict", no_args_is_help=True)(infer_cmds.predict)
app.add_typer(visualize_cmds.app, name="visualize")
app.command("import-checkpoint", no_args_is_help=True)(import_cmds.import_checkpoint)


def _version(value: bool):
    if value:
        typer.echo(f"segadapt {__version__}")
        raise typer.Exit()


@app.callback()
def main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                      help="Print the version and exit.")):
    pass


def _join_process_group() -> int:
    """Under torchrun (WORLD_SIZE > 1): join the group; ranks other than 0 print nothing on stdout and
    log nothing, so scripts read one result. Returns the rank."""
    if os.environ.get("WORLD_SIZE", "1") in ("", "1"):
        return 0
    from segadapt.console import mute
    from segadapt.engine.distributed import init_from_env

    rank = init_from_env().rank
    if rank != 0:
        mute()
        sys.stdout = open(os.devnull, "w")
    return rank


def run() -> None:
    rank = 0
    try:
        rank = _join_process_group()
        app(standalone_mode=False)
    except SegadaptError as e:
        _fail(str(e), e.exit_code, rank)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.Abort:
        _fail("aborted", 130)
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except Exception as e:  # noqa: BLE001 - click usage errors and unexpected failures
        # click's usage errors (Typer vendors click in newer releases, so match by shape, not class)
        if callable(getattr(e, "show", None)) and isinstance(getattr(e, "exit_code", None), int):
            if type(e).__name__ == "NoArgsIsHelpError" or not callable(getattr(e, "format_message", None)):
                e.show()  # a command given no arguments prints its help
                sys.exit(e.exit_code)
            _fail(_one_line(e), e.exit_code, rank)
        if os.environ.get("SEGADAPT_DEBUG"):
            raise
        if isinstance(e, OSError):
            _fail(f"{e.strerror or e}: {e.filename}" if e.filename else str(e), 1)
        _fail(f"internal error ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
              "set SEGADAPT_DEBUG=1 for the traceback", 1)
    finally:
        if rank or os.environ.get("WORLD_SIZE", "1") not in ("", "1"):
            from segadapt.engine.distributed import shutdown

            shutdown()
    sys.exit(0)


def _one_line(e) -> str:
    """A click usage error as one line, like every other error: the message, then where the help is."""
    message = " ".join(e.format_message().split())
    ctx = getattr(e, "ctx", None)
    return f"{message} (see '{ctx.command_path} --help')" if ctx is not None else message


def _fail(message: str, code: int, rank: int = 0) -> None:
    if rank == 0:  # every rank meets the same error; one line is enough
        print(f"segadapt: error: {message}", file=sys.stderr)
    sys.exit(code)
