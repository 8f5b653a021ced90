"""The ``agent`` command line: one console script, subcommands imported lazily so --help is fast."""
