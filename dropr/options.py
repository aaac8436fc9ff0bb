"""Options of the ``dropr`` and ``droprd`` command lines that every command
takes, typed before or after the subcommand: ``droprd --config F start`` and
``droprd start --config F`` are the same (systemd units, init scripts and
cron lines are written both ways)."""

import argparse


def add_everywhere(parser, *flags, **kwargs):
    """Add an option to ``parser`` and to every subcommand parser under it
    (call it once all subcommands are added). Under a subcommand the option
    has no default of its own, so one given before the subcommand is kept
    unless it is given again after it."""
    parser.add_argument(*flags, **kwargs)
    for sub in subcommands(parser):
        sub.add_argument(*flags, **{**kwargs, "default": argparse.SUPPRESS})


def subcommands(parser):
    """Every subcommand parser under ``parser``, at every depth."""
    found = []
    for action in parser._actions:  # argparse keeps its subparsers nowhere public
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):  # aliases repeat a parser
                found += [sub, *subcommands(sub)]
    return found
