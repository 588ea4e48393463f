#!/usr/bin/env python3
"""Runs one of the analysis notebooks headless, with parameters, and saves it with its outputs.

    .venv/bin/python notebooks/run_notebook.py NOTEBOOK --out FILE [--param NAME=VALUE ...]

papermill runs it: the notebook's cell tagged ``parameters`` holds the defaults, and the given
values go into a cell papermill adds right after it (tagged ``injected-parameters``), so they
win. A VALUE is read as a Python literal (``42``, ``None``, ``['a.yaml', 'b.yaml']``) and else
taken as a string (``--param flow_dir=/tmp/lab``). The kernel is this interpreter's ipykernel
(the venv's), over local sockets, in the notebook's directory (relative paths in parameters are relative to it),
with matplotlib's inline backend, which renders figures as PNG with Agg. The executed notebook,
outputs and all, goes to --out, also when a cell failed: then the exit status is 1 and the
error is on stderr.
"""

from __future__ import annotations

import argparse
import ast
import sys
import tempfile
from pathlib import Path
from typing import Any

import nbformat
import papermill
from ipykernel.kernelspec import write_kernel_spec
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from papermill.exceptions import PapermillExecutionError

KERNEL = "tollgate-notebooks"


def execute(path: Path, params: dict[str, Any], timeout: int = 600) -> nbformat.NotebookNode:
    """The notebook at ``path`` run with ``params`` in its directory; raises
    PapermillExecutionError (with the executed notebook as ``.notebook``) when a cell fails."""
    with tempfile.TemporaryDirectory(prefix="tollgate-kernel-") as kernels:
        # A kernelspec of this interpreter, so the kernel has the venv's packages.
        write_kernel_spec(
            Path(kernels) / KERNEL,
            overrides={
                "display_name": "tollgate notebooks",
                "env": {"MPLBACKEND": "module://matplotlib_inline.backend_inline"},
            },
        )
        manager = KernelManager(
            kernel_name=KERNEL,
            kernel_spec_manager=KernelSpecManager(kernel_dirs=[kernels]),
            # Local sockets in the temporary directory rather than TCP on 127.0.0.1.
            transport="ipc",
            ip=str(Path(kernels) / "ipc"),
        )
        out = Path(kernels) / "executed.ipynb"
        try:
            return papermill.execute_notebook(
                str(path),
                str(out),
                parameters=params,
                kernel_name=KERNEL,
                cwd=str(path.resolve().parent),
                execution_timeout=timeout,
                progress_bar=False,
                km=manager,
            )
        except PapermillExecutionError as e:
            e.notebook = nbformat.read(out, as_version=4)
            raise
        finally:
            # nbclient leaves running the kernel of a manager it did not create: stop it too.
            if manager.has_kernel:
                manager.shutdown_kernel(now=True)


def parse_param(item: str) -> tuple[str, Any]:
    name, sep, text = item.partition("=")
    if not sep or not name.isidentifier():
        raise SystemExit(f"run_notebook.py: error: --param {item!r}: expected NAME=VALUE")
    try:
        return name, ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return name, text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebook", type=Path)
    parser.add_argument("--param", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument(
        "--out", type=Path, required=True, help="where to write the executed notebook"
    )
    args = parser.parse_args(argv)
    try:
        notebook = execute(args.notebook, dict(parse_param(p) for p in args.param))
        status = 0
    except PapermillExecutionError as e:
        notebook = e.notebook
        print(f"run_notebook.py: {args.notebook}: {e.ename}: {e.evalue}", file=sys.stderr)
        status = 1
    nbformat.write(notebook, args.out)
    print(f"wrote {args.out}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
