"""The command-line modules of ``python -m nfkd``: one module per command (see ``nfkd.__main__``)."""
