"""``manage.py model_validate VERSION``: run a model version on the locked validation set.

``VERSION`` is ``name-version`` (``lesionseg-1.0.0``), a version alone when unambiguous,
or ``active``. The report (sensitivity per organ, side and size band, false positives
per study, Dice, volume and diameter error, calibration, time per study, beside the
active model) is stored with the version and exported as HTML; the command prints the
headline figures and the verdict against the promotion margins.
"""

import getpass

import torch
from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from imaging.core.segmentation.network import SegmenterError
from imaging.modelhub.services import RegistryError, model_find
from imaging.modelhub.validation import report_html_path


def _pct(value):
    return "-" if value is None else f"{100 * value:.1f} %"


class Command(BaseCommand):
    help = "Validate a segmentation model version on the locked validation set, beside the active model."

    def add_arguments(self, parser):
        parser.add_argument("version", help="name-version, a version, or active")
        parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="cpu")
        parser.add_argument("--threads", type=int, default=2)
        parser.add_argument("--quiet", action="store_true", help="no progress bar")

    def handle(self, *args, **options):
        from imaging.modelhub.validation import model_validate

        torch.set_num_threads(max(1, options["threads"]))
        device = options["device"]
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        bar = tqdm(
            desc="validate", unit="study", disable=options["quiet"] or None, file=self.stderr._out
        )
        try:
            model = model_find(options["version"])
            report = model_validate(model=model, device=device, username=getpass.getuser(),
                                    on_case=lambda case, s: bar.update(1))  # fmt: skip
        except (RegistryError, SegmenterError) as exc:
            raise CommandError(str(exc)) from exc
        finally:
            bar.close()
        m = report.metrics
        refusals = report.comparison.get("refusals", [])
        texts = [r["text"] for r in report.comparison.get("regressions", [])]
        verdict = ("no regression beyond the margins" if report.passed else
                   "; ".join([*(f"not passed: {r}" for r in refusals),
                              *(["regressions: " + "; ".join(texts)] if texts else [])]))  # fmt: skip
        against = (
            f" against {report.compared_with.label}"
            if report.compared_with
            else " (active: nothing to compare)"
        )
        self.stdout.write(
            f"model_validate: {model.label} on {report.set_name} ({m['studies']} studies, "
            f"{m['overall']['lesions']} lesions): sensitivity {_pct(m['overall']['sensitivity'])} "
            f"(lung {_pct(m['by_organ']['lung']['sensitivity'])}, liver {_pct(m['by_organ']['liver']['sensitivity'])}), "
            f"FP/study {m['overall']['fp_per_study']:.2f}, median volume error "
            f"{_pct(m['overall']['volume_error_median'])}, {m['seconds_per_study']['median']:.1f} s/study"
            f"{against}: {verdict}; report {report_html_path(report)}"
        )
