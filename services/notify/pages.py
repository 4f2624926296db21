"""The citizen-facing pages behind the links in messages: the satisfaction survey and the opt-out."""

from __future__ import annotations

from urllib.parse import parse_qs

from jinja2 import Environment, FileSystemLoader, select_autoescape

from services.notify.messages import TEMPLATES

_env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(["html", "j2"]), auto_reload=False)

# Decision 766 group 6 asks satisfied / neutral / dissatisfied; the values are the metric's label values.
RATINGS: dict[str, str] = {"satisfied": "Hài lòng", "neutral": "Bình thường", "dissatisfied": "Không hài lòng"}
MAX_FORM_BYTES = 16_384


def survey_page(outcome: str, code: str = "", unit: str = "", max_comment: int = 2000) -> str:
    return _env.get_template("pages/khao_sat.html.j2").render(
        outcome=outcome, code=code, unit=unit, ratings=list(RATINGS.items()), max_comment=max_comment)


def opt_out_page(outcome: str, code: str = "", opted_out: bool = False) -> str:
    return _env.get_template("pages/huy_nhan_tin.html.j2").render(outcome=outcome, code=code, opted_out=opted_out)


def form_fields(body: bytes) -> dict[str, str]:
    """An HTML form's fields (application/x-www-form-urlencoded), the first value of each."""
    fields = parse_qs(body.decode("utf-8", errors="replace"), max_num_fields=10)
    return {name: values[0] for name, values in fields.items() if values}
