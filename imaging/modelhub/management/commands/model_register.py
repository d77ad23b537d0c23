"""``manage.py model_register PATH --format F --name N --version V [--labels JSON]``.

Registers a segmentation model as a candidate: an nnU-Net v2 trained model folder, a
MONAI bundle folder, an ONNX file (or a folder holding one) or RadTrack weights (a folder
with ``manifest.json``). Its files are described with their SHA-256, copied into the
data store, and the model is run once on a phantom before the row is written.
``--labels`` names each output channel (JSON, or @file): ``{"0": "background", "1":
"liver", "2": "liver_lesion"}``; nnU-Net and MONAI bundles that name their outputs
(``dataset.json``, ``metadata.json``) need it only when those names are not RadTrack's.
``--conventions`` overrides the input conventions (JSON or @file; see
`imaging.core.modelhub.conventions.InputConventions`).
"""

import getpass
import json
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from imaging.core.modelhub.conventions import FORMATS
from imaging.core.segmentation.network import SegmenterError
from imaging.modelhub.services import RegistryError, model_register


def json_argument(text: str | None, option: str):
    """JSON from the command line, or from a file given as ``@path``."""
    if text is None:
        return None
    try:
        if text.startswith("@"):
            return json.loads(Path(text[1:]).read_text())
        return json.loads(text)
    except FileNotFoundError:
        raise CommandError(f"{option}: no file {text[1:]}") from None
    except json.JSONDecodeError as exc:
        raise CommandError(f"{option}: not valid JSON ({exc})") from None


class Command(BaseCommand):
    help = "Register a segmentation model version (nnU-Net v2, MONAI bundle, ONNX, RadTrack) as a candidate."

    def create_parser(self, prog_name, subcommand, **kwargs):
        # --version is the model's (the interface), not Django's own version flag.
        return super().create_parser(prog_name, subcommand, conflict_handler="resolve", **kwargs)

    def add_arguments(self, parser):
        parser.add_argument("path", type=Path, help="the model's folder or file")
        parser.add_argument("--format", required=True, choices=FORMATS, dest="fmt")
        parser.add_argument("--name", help="lower-case letters, digits, _ and . (no hyphen)")
        parser.add_argument("--version")
        parser.add_argument("--labels", help="JSON (or @file): output channel -> label")
        parser.add_argument("--conventions", help="JSON (or @file): input conventions")
        parser.add_argument("--notes", default="")

    def handle(self, *args, **options):
        path: Path = options["path"]
        if not path.exists():
            raise CommandError(f"{path} does not exist")
        try:
            row = model_register(
                source=path, fmt=options["fmt"], name=options["name"], version=options["version"],
                labels=json_argument(options["labels"], "--labels"),
                conventions=json_argument(options["conventions"], "--conventions"),
                username=getpass.getuser(), notes=options["notes"],
            )  # fmt: skip
        except (RegistryError, SegmenterError) as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(
            f"model_register: {row.label} ({row.format}) registered as a candidate, "
            f"{len(row.files)} file(s), SHA-256 {row.sha256[:16]}...; validate it with "
            f"manage.py model_validate {row.label}"
        )
