#!/usr/bin/env python3
"""Base model and FLAS flow checkpoints -> GGUF. Same as the installed `flas-convert` command."""

import sys

from flas_cpp.convert.cli import main

if __name__ == "__main__":
    sys.exit(main())
