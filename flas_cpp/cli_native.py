"""`flas-cli`: the native command line (tools/flas-cli.c, over the C API) shipped in the wheel."""

from __future__ import annotations

import os
import sys
from pathlib import Path


def main() -> int:
    exe = Path(__file__).resolve().parent / "flas-cli"
    if not exe.is_file():
        print(f"flas-cli: {exe} is missing; install the package with pip install .", file=sys.stderr)
        return 1
    os.execv(str(exe), [str(exe), *sys.argv[1:]])
    return 1  # not reached


if __name__ == "__main__":
    sys.exit(main())
