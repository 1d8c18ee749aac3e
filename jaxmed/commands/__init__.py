"""Command-line subcommands, one module each, every one exposing ``add_parser(subparsers)`` (which sets
the handler as ``func``) so that :mod:`jaxmed.cli` only has to call it."""
