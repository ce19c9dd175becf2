"""Aerial Inpainting file for ensuring the package is executable
as `aerial-inpainting` and `python -m aerial_inpainting`
"""

import sys
from pathlib import Path
from typing import Any


def main(*args, **kwargs) -> Any:
    """Kedro's ``run`` command, except ``aerial-inpainting weights ...`` (pretrained weights:
    ``aerial-inpainting weights fetch``, see :mod:`aerial_inpainting.pretrained`),
    ``aerial-inpainting serve ...`` (the local web page, :mod:`aerial_inpainting.web_app`) and
    ``aerial-inpainting export --onnx OUT.onnx [--model ...]`` (see
    :mod:`aerial_inpainting.onnx_export`)."""
    argv = list(args[0]) if args and isinstance(args[0], (list, tuple)) else sys.argv[1:]
    if argv[:1] == ["weights"]:
        from aerial_inpainting.pretrained import cli

        sys.exit(cli(argv[1:]))
    if argv[:1] == ["serve"]:
        from aerial_inpainting.web_app import cli as serve_cli

        sys.exit(serve_cli(argv[1:]))
    if argv[:1] == ["export"]:
        from aerial_inpainting.onnx_export import cli as export_cli

        sys.exit(export_cli(argv[1:]))
    from kedro.framework.cli.utils import find_run_command
    from kedro.framework.project import configure_project

    package_name = Path(__file__).parent.name
    configure_project(package_name)

    interactive = hasattr(sys, "ps1")
    kwargs["standalone_mode"] = not interactive

    run = find_run_command(package_name)
    return run(*args, **kwargs)


if __name__ == "__main__":
    main()
