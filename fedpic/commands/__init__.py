"""The `fedpic` commands, one module per group. Each exposes `register(subparsers)`.

Parsing must stay light: a command module imports only argparse, pathlib and pic_core.config
at the top; torch, OpenCV and Flower are imported inside the function that runs the command,
so `fedpic --help` starts in well under a second.
"""
