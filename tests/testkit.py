"""Helpers shared by test files: the CLI's one-line refusals, a free loopback port."""

import socket

from qkcopy.cli import main

FAST = ["--workers", "0", "--device", "cpu"]  # CLI flags that keep a test in one process on the CPU


def refused(argv: list[str], capsys, *needles, extra: list[str] = FAST) -> str:
    """Run the CLI; assert it failed with one error line holding every needle; return that line."""
    assert main(argv + extra) == 2, argv
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    line = err.strip().splitlines()[-1]
    assert line.startswith(f"qkcopy {argv[0]}: error: "), err
    for needle in needles:
        assert str(needle) in line, (needle, line)
    return line


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
