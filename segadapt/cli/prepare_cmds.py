"""`segadapt prepare-data NAME`: raw dataset -> prepared folder (trainId labels, split lists, stats).

One subcommand per registered converter, generated from ``CONVERTERS``: each converter module declares
its options as data (``ConverterOption``: flag, type, help, default, parser), so each subcommand shows
and accepts only its own options, and adding a converter needs no line here."""

from __future__ import annotations

import inspect
import json
from typing import Optional

import typer

from segadapt.cli.options import renamed
from segadapt.data.prepare import CONVERTERS
from segadapt.data.prepare.common import Converter

app = typer.Typer(no_args_is_help=True,
                  help="Convert a raw dataset (or generate the synthetic benchmark) into a prepared folder.")

# options that were WxH: refused with the HxW spelling (the same text would silently mean another size)
OLD_SPELLINGS = {"old_resize": ("--resize", "--image-size"), "old_size": ("--size", "--image-size")}


def _command(conv: Converter):
    """A Typer command whose signature is the converter's options (Typer reads ``__signature__``)."""
    def run(**values):
        for key in OLD_SPELLINGS:
            values.pop(key, None)
        kwargs = {o.param: (o.parse(values[o.param]) if o.parse else values[o.param]) for o in conv.options}
        report = conv.fn(**kwargs)
        skipped = report.get("skipped")
        typer.echo(json.dumps({"out": str(kwargs.get("out")), "kept": report.get("kept"),
                               "skipped": len(skipped) if isinstance(skipped, list) else skipped}))

    params, annotations = [], {}
    for o in conv.options:
        # an optional option without a default is None when not given: Optional[...] tells Typer so
        kind = Optional[o.type] if o.default is None else o.type
        params.append(inspect.Parameter(o.param, inspect.Parameter.KEYWORD_ONLY, annotation=kind,
                                        default=typer.Option(o.default, o.flag, help=o.help)))
        annotations[o.param] = kind
    for key, (old, new) in OLD_SPELLINGS.items():
        params.append(inspect.Parameter(key, inspect.Parameter.KEYWORD_ONLY, annotation=Optional[str],
                                        default=renamed(old, new)))
        annotations[key] = Optional[str]
    run.__signature__ = inspect.Signature(params)
    run.__annotations__ = annotations
    run.__name__ = f"prepare_{conv.name}"
    run.__doc__ = conv.help
    return run


for _name, _conv in CONVERTERS.items():
    app.command(_name, no_args_is_help=True, help=_conv.help)(_command(_conv))
