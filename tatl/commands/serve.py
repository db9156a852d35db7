"""Start a local web app to see a run's predictions over a folder of images, correct them and teach the model.

The page shows a gallery of FOLDER's images (drag images onto it to add them: they are predicted at once), a
viewer with the lesion, abnormal region and attribute layers, an editor (brush, eraser, polygon, undo/redo,
autosaved drafts) that saves the official masks FOLDER/corrections/<id>_attribute_<name>.png with every version
kept, and a Teach button that fine-tunes the model on the corrections in the background. The REST API is
documented at /docs. Binds to 127.0.0.1 unless told otherwise; any other address requires a token (generated and
printed when --token is not given). Needs `pip install 'tatl[serve]'`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

EXAMPLES = """\
examples:
  tatl serve runs/demo --data photos/
  tatl serve runs/demo --data photos/ --port 8080
  tatl serve runs/demo --data photos/ --host 0.0.0.0 --token s3cret      # reachable from other machines
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="RUN", type=Path, help="run folder of `tatl run` (or an ONNX export)")
    parser.add_argument("--data", required=True, type=Path, metavar="FOLDER",
                        help="folder of images; corrections and the server's files are written inside it")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    parser.add_argument("--token", help="required on every request; generated when --host is not loopback")
    parser.add_argument("--max-upload-mb", type=int, default=64, metavar="MB", help="largest upload (default 64)")


def run(args: argparse.Namespace) -> int:
    from tatl.errors import ConfigError
    from tatl.serving.security import ServerSettings

    try:
        from tatl.serving.server import serve
    except ImportError as error:
        raise ConfigError(f"tatl serve needs FastAPI and uvicorn: pip install 'tatl[serve]' ({error})") from error
    serve(ServerSettings(args.model, args.data, args.host, args.port, args.token, args.max_upload_mb * 2**20),
          announce=print)
    return 0
