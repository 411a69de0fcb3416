"""`segadapt prepare-data NAME`: raw dataset -> prepared folder (trainId labels, split lists, stats).

One subcommand per registered converter, generated from ``CONVERTERS``: each converter module declares
its options as data (``ConverterOption``: flag, type, help, default, parser), so each subcommand shows
and accepts only its own options, and adding a converter needs no line here."""

from __future__ import annotations

import json
from typing import Optional

import typer

from segadapt.cli.options import renamed, with_options
from segadapt.data.prepare import CONVERTERS
from segadapt.data.prepare.common import Converter

app = typer.Typer(no_args_is_help=True,
                  help="Convert a raw dataset (or generate the synthetic benchmark) into a prepared folder.")

# options that were WxH: refused with the HxW spelling (the same text would silently mean another size)
OLD_SPELLINGS = {"old_resize": ("--resize", "--image-size"), "old_size": ("--size", "--image-size")}


def _command(conv: Converter):
    """A Typer command whose parameters are the converter's options (``with_options``)."""
    def run(**values):
        for key in OLD_SPELLINGS:
            values.pop(key, None)
        kwargs = {o.param: (o.parse(values[o.param]) if o.parse else values[o.param]) for o in conv.options}
        report = conv.fn(**kwargs)
        skipped = report.get("skipped")
        typer.echo(json.dumps({"out": str(kwargs.get("out")), "kept": report.get("kept"),
                               "skipped": len(skipped) if isinstance(skipped, list) else skipped}))

    # an optional option without a default is None when not given: Optional[...] tells Typer so
    group = {o.param: (Optional[o.type] if o.default is None else o.type, typer.Option(o.default, o.flag, help=o.help))
             for o in conv.options}
    group |= {key: (Optional[str], renamed(old, new)) for key, (old, new) in OLD_SPELLINGS.items()}
    run = with_options(group)(run)
    run.__name__ = f"prepare_{conv.name}"
    run.__doc__ = conv.help
    return run


for _name, _conv in CONVERTERS.items():
    app.command(_name, no_args_is_help=True, help=_conv.help)(_command(_conv))
