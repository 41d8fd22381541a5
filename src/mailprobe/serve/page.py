"""The web page at `/`: plain HTML and a little JavaScript (no build step) over the API."""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

router = APIRouter()


def _page(name: str) -> str:
    return resources.files("mailprobe.serve").joinpath("static", name).read_text(encoding="utf-8")


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def index() -> HTMLResponse:
    return HTMLResponse(_page("index.html"))
