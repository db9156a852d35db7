"""One module per `tatl` subcommand. Each has `add_arguments(parser)` and `run(args) -> int`."""
