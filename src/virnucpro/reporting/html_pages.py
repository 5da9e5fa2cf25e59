"""Small HTML pages of tables, which the Snakemake report shows in a frame.

A page is also a fragment: its style applies only inside its own `div.virnucpro`, so that the
report's first page can embed the run summary (see workflow/report/workflow.rst); browsers accept
the page without <html>, <head> and <body>, which HTML makes optional.
"""

from __future__ import annotations

import html

_STYLE = (".virnucpro{font-family:sans-serif;font-size:14px;margin:1em}"
          ".virnucpro table{border-collapse:collapse;margin:.5em 0}"
          ".virnucpro th,.virnucpro td{border:1px solid #ccc;padding:2px 6px}.virnucpro td{text-align:right}"
          ".virnucpro td:first-child,.virnucpro th{text-align:left}.virnucpro th{background:#f0f0f0}")


def table(headings: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(heading)}</th>" for heading in headings)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def heading(text: str) -> str:
    return f"<h2>{html.escape(text)}</h2>"


def paragraph(text: str, bold_prefix: str | None = None) -> str:
    prefix = f"<b>{html.escape(bold_prefix)}</b> " if bold_prefix else ""
    return f"<p>{prefix}{html.escape(text)}</p>"


def page(title: str, body: str) -> str:
    return (f"<!DOCTYPE html><meta charset='utf-8'><title>{html.escape(title)}</title><style>{_STYLE}</style>"
            f"<div class='virnucpro'><h1>{html.escape(title)}</h1>{body}</div>\n")
