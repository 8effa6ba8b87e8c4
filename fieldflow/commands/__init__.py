"""Subcommands of the ``fieldflow`` command line that own their argument parsers."""
