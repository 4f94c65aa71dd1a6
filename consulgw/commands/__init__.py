"""One module per ``consulgw`` subcommand; each exposes ``main(args: argparse.Namespace) -> int``."""
