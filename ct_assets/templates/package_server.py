"""Serve the one model version of this package (made by `ct package`; see README.md).

    python server.py [--host 127.0.0.1] [--port 8080] [--token TOKEN] [--log-dir DIR]
                     [--labels-dir DIR]

Needs only `requirements.txt` and the code under `app/`: no warehouse, no Dagster, no model
store. Before serving, the manifest under `model/` is checked against the sha256 recorded in
`package.json`, and every model file against the manifest; a mismatch is a one-line error naming
the file, and nothing is served.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "app"))  # the vendored `ct_assets` code of this package

from ct_assets.lib.model_store import ModelStoreError  # noqa: E402
from ct_assets.serve.hot_swap import load_initial  # noqa: E402
from ct_assets.serve.server import bind, run, url_of  # noqa: E402
from ct_assets.serve.settings import TOKEN_ENV, ServeSettings  # noqa: E402

PACKAGE = HERE / "package.json"
MODELS = HERE / "model"


def read_package() -> dict[str, Any]:
    """`package.json`: the version, its manifest's sha256 and the server's settings.

    Raises:
        ValueError: naming `package.json`, when it is missing or unreadable.
    """
    try:
        package = json.loads(PACKAGE.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ValueError(f"{PACKAGE}: unreadable ({error})") from None
    missing = [key for key in ("version", "manifest_sha256", "serving")
               if not isinstance(package, dict) or key not in package]
    if missing:
        raise ValueError(f"{PACKAGE}: lacks {', '.join(missing)}")
    return package


def settings_for(package: dict[str, Any], token: str | None = None,
                 log_dir: Path | None = None, labels_dir: Path | None = None) -> ServeSettings:
    """The settings of this package's server: its one version, pinned by its manifest's sha256.

    Args:
        package: `package.json`.
        token: bearer token required on every route but health (None: open).
        log_dir: where the request log goes (None: `serving/` beside this file).
        labels_dir: where `POST /feedback` writes label files (None: feedback is refused).
    """
    return ServeSettings(models_dir=MODELS, version=package["version"],
                         manifest_sha256=package["manifest_sha256"], token=token,
                         serving_dir=log_dir or HERE / "serving", labels_dir=labels_dir,
                         **package["serving"])


def main(argv: list[str] | None = None) -> int:
    """Serve until SIGTERM or Ctrl-C; a one-line error and exit 2 when the model fails checks."""
    parser = argparse.ArgumentParser(prog="server.py", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080, help="0 picks a free port")
    parser.add_argument("--token", default=os.environ.get(TOKEN_ENV),
                        help=f"bearer token (default: ${TOKEN_ENV}; none: open)")
    parser.add_argument("--log-dir", type=Path,
                        help="request log (default: serving/ beside server.py)")
    parser.add_argument("--labels-dir", type=Path,
                        help="where POST /feedback lands label files (default: refused)")
    args = parser.parse_args(argv)
    try:
        settings = settings_for(read_package(), args.token or None, args.log_dir,
                                args.labels_dir)
        served = load_initial(settings)
        listening = bind(args.host, args.port)
    except (ModelStoreError, OSError, ValueError) as error:
        print(f"server.py: {' '.join(str(error).split())}", file=sys.stderr)  # noqa: T201
        return 2
    settings.url = url_of(listening)
    run(settings, listening, served, on_started=lambda model: print(  # noqa: T201
        f"serving {settings.model_name} version {model.version} at {settings.url}", flush=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
