"""`DLQBrowser`: browse, filter, inspect and replay a DLQ in a notebook (ipywidgets).

Everything the buttons do is a method, callable without a browser (and tested that way)::

    browser = DLQBrowser(client, "webhook_events")
    browser                                   # the widget: filters, a paged table, a detail
    browser.filter(tenant_id="tenant-003")    # the filter keywords of select_dlq
    browser.frame                             # the rows the filter shows (all pages)
    browser.detail(browser.frame["id"].iloc[0])   # payload, traceback, failure, raw fields
    browser.dry_run()                         # a ReplayReport: what a replay would do
    browser.replay(confirm=True)              # replay what is selected, then reload

Needs the ``notebook`` extra: ``pip install 'streamlab[notebook]'``.
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterable
from typing import Any

import pandas as pd

from streamlab.client import ClientLike, as_client
from streamlab.errors import MissingDependencyError, NotFoundError
from streamlab.filters import COLUMNS, DLQFilter
from streamlab.frames import dlq_to_dataframe
from streamlab.ids import Bound, id_range, parse_id
from streamlab.replay import ReplayReport, replay_dlq, select_dlq

try:
    import ipywidgets as w
except ImportError:  # pragma: no cover - exercised by a subprocess test
    raise MissingDependencyError(
        "streamlab.widgets needs ipywidgets: pip install 'streamlab[notebook]'"
    ) from None

__all__ = ["DLQBrowser"]

# The table's columns, in the order an investigator reads them.
SHOWN = ("id", "failed_at", "event_type", "tenant_id", "repository", "error_type", "error")
ANY = "(any)"


class DLQBrowser:
    """A DLQ in a notebook: filter it, page through it, read one event, dry-run, replay.

    ``client`` is a `RedisStreamsClient`, a ``redis.Redis`` or a ``RedisCluster``; ``stream``
    the source stream, whose DLQ is the client's DLQ of it unless ``dlq`` names another.
    The DLQ is read once (`refresh` reads it again); filtering and paging work on that copy,
    and a replay acts on Redis and then reloads.
    """

    def __init__(
        self, client: ClientLike, stream: str, *, dlq: str | None = None, page_size: int = 25
    ) -> None:
        if page_size < 1:
            raise ValueError(f"page_size: must be >= 1, got {page_size}")
        self.client = as_client(client)
        self.stream = stream
        self.dlq = dlq or self.client.dlq_stream(stream)
        self.page_size = page_size
        self.page = 0
        self.last_report: ReplayReport | None = None
        self._filter = DLQFilter()
        self._since: Bound | None = None
        self._until: Bound | None = None
        self._selected: list[str] | None = None
        self._all = pd.DataFrame()
        self._frame = pd.DataFrame()
        self._build_widgets()
        self.refresh()

    # -- the logic the buttons call ---------------------------------------------------------

    def refresh(self) -> DLQBrowser:
        """Read the DLQ again and re-apply the filter."""
        self._all = dlq_to_dataframe(self.client, self.stream, dlq=self.dlq)
        self._fill_choices()
        self._apply()
        return self

    def filter(
        self, *, since: Bound | None = None, until: Bound | None = None, **keywords: Any
    ) -> DLQBrowser:
        """Show the dead letters matching `select_dlq`'s filter keywords (``event_type``,
        ``tenant_id``, ``repository``, ``error_type``, ``error_signature``, ``error_contains``,
        ``ids``, ``where``) and ``since`` / ``until``; no keyword shows everything.
        The selection goes back to everything shown."""
        flt = DLQFilter.of(**keywords)
        id_range(since, until)  # a bad bound fails here, naming itself
        self._filter, self._since, self._until = flt, since, until
        self._selected = None
        self.page = 0
        self._apply()
        return self

    @property
    def frame(self) -> pd.DataFrame:
        """The DLQ rows the filter shows (every page), as `dlq_to_dataframe` gives them."""
        return self._frame

    def select(self, ids: Iterable[str] | None) -> DLQBrowser:
        """Act on these DLQ ids only (of those shown); None: everything shown."""
        if ids is None:
            self._selected = None
        else:
            wanted = list(ids.tolist() if hasattr(ids, "tolist") else ids)
            shown = set(self._frame["id"])
            unknown = [i for i in wanted if i not in shown]
            if unknown:
                raise NotFoundError(
                    f"not among the {len(shown):,} dead letters shown: {', '.join(unknown[:5])}"
                )
            self._selected = [i for i in self._frame["id"] if i in set(wanted)]
        self._show_status()
        return self

    @property
    def selected(self) -> list[str]:
        """The DLQ ids a dry run or replay acts on (default: everything the filter shows)."""
        return list(self._frame["id"]) if self._selected is None else list(self._selected)

    def detail(self, dlq_id: str) -> dict[str, Any]:
        """One dead letter: ``payload`` (parsed), ``traceback``, ``failure`` (the failure
        fields), ``event`` (the event's other fields) and ``raw`` (every field, as text)."""
        rows = self._all[self._all["id"] == dlq_id]
        if rows.empty:
            raise NotFoundError(f"DLQ {self.dlq!r} has no entry {dlq_id!r}")
        entries = self.client.redis.xrange(self.dlq, dlq_id, dlq_id, count=1)
        if not entries:
            raise NotFoundError(f"DLQ entry {dlq_id!r} is gone (replayed or trimmed): refresh")
        raw = {_text(k): _text(v) for k, v in entries[0][1].items()}  # names and values as text
        payload_text = raw.get("payload")
        try:
            payload = json.loads(payload_text) if payload_text else None
        except ValueError:
            payload = payload_text
        failure = {
            k[4:]: v for k, v in raw.items() if k.startswith("dlq_") and k != "dlq_traceback"
        }
        failure["error_signature"] = str(rows["error_signature"].iloc[0])
        event = {k: v for k, v in raw.items() if not k.startswith("dlq_") and k != "payload"}
        return {
            "id": dlq_id,
            "payload": payload,
            "traceback": raw.get("dlq_traceback", ""),
            "failure": failure,
            "event": event,
            "raw": raw,
        }

    def dry_run(self) -> ReplayReport:
        """What replaying the selection would do; nothing is written."""
        return self._replay(dry_run=True)

    def replay(self, *, confirm: bool = False) -> ReplayReport:
        """Replay the selection (``confirm=True`` required), then reload the DLQ."""
        if not confirm:
            raise ValueError("replay(confirm=True) replays the selection; see dry_run() first")
        report = self._replay(dry_run=False)
        self.refresh()
        return report

    def _replay(self, *, dry_run: bool) -> ReplayReport:
        ids = self.selected
        selection = select_dlq(self.client, self.stream, dlq=self.dlq, ids=ids)
        report = replay_dlq(self.client, self.stream, selection, dlq=self.dlq, dry_run=dry_run)
        self.last_report = report
        self._report_out.value = report._repr_html_()
        return report

    def _apply(self) -> None:
        frame = self._filter.apply(self._all) if len(self._all) else self._all
        if len(frame) and (self._since is not None or self._until is not None):
            bounds = id_range(self._since, self._until)
            lo, hi = (parse_id(b) for b in bounds) if bounds else ((1, 0), (0, 0))
            frame = frame[[lo <= parse_id(i) <= hi for i in frame["id"]]]
        self._frame = frame
        self._show_table()

    # -- the widget -------------------------------------------------------------------------

    def _build_widgets(self) -> None:
        layout = w.Layout(width="auto")
        self._dropdowns = {
            name: w.Dropdown(description=name, options=[ANY], layout=layout) for name in COLUMNS
        }
        self._contains = w.Text(description="error has", placeholder="text in the error")
        self._since_box = w.Text(description="since", placeholder="2026-11-30T14:00Z or ms")
        self._until_box = w.Text(description="until", placeholder="stream id, ms or time")
        apply_button = w.Button(description="Apply filter", button_style="primary")
        clear_button = w.Button(description="Clear")
        self._status = w.HTML()
        self._table = w.HTML()
        self._prev = w.Button(description="◀ previous", layout=w.Layout(width="110px"))
        self._next = w.Button(description="next ▶", layout=w.Layout(width="110px"))
        self._page_label = w.Label()
        self._id_box = w.Dropdown(description="entry", options=[], layout=w.Layout(width="420px"))
        self._detail_out = w.HTML()
        dry_button = w.Button(description="Dry run", icon="search")
        replay_button = w.Button(description="Replay…", button_style="warning", icon="redo")
        self._confirm = w.HBox(
            [
                w.Label("Replay the selection into its source stream?"),
                w.Button(description="Yes, replay", button_style="danger"),
                w.Button(description="Cancel"),
            ]
        )
        self._confirm.layout.display = "none"
        self._report_out = w.HTML()

        apply_button.on_click(lambda _: self._on_apply())
        clear_button.on_click(lambda _: self._on_clear())
        self._prev.on_click(lambda _: self._turn(-1))
        self._next.on_click(lambda _: self._turn(+1))
        self._id_box.observe(lambda change: self._show_detail(change["new"]), names="value")
        dry_button.on_click(lambda _: self._guard(self.dry_run))
        replay_button.on_click(lambda _: setattr(self._confirm.layout, "display", "flex"))
        yes, no = self._confirm.children[1], self._confirm.children[2]
        yes.on_click(lambda _: self._on_confirmed())
        no.on_click(lambda _: setattr(self._confirm.layout, "display", "none"))

        filters = w.GridBox(
            [*self._dropdowns.values(), self._contains, self._since_box, self._until_box],
            layout=w.Layout(grid_template_columns="repeat(2, 1fr)"),
        )
        self.widget = w.VBox(
            [
                w.HTML(f"<h3>DLQ <code>{html.escape(self.dlq)}</code></h3>"),
                filters,
                w.HBox([apply_button, clear_button]),
                self._status,
                self._table,
                w.HBox([self._prev, self._page_label, self._next]),
                w.HTML("<b>One dead letter</b>"),
                self._id_box,
                self._detail_out,
                w.HBox([dry_button, replay_button]),
                self._confirm,
                self._report_out,
            ]
        )

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        # A notebook shows the widget itself; its own bundle carries the widget view.
        return self.widget._repr_mimebundle_(**kwargs)

    def _fill_choices(self) -> None:
        for name, box in self._dropdowns.items():
            # Most frequent first: the values an investigator is after are the big ones.
            counts = self._all[name].dropna().astype(str).value_counts() if len(self._all) else None
            box.options = [ANY, *([] if counts is None else counts.index.tolist())]

    def _on_apply(self) -> None:
        keywords: dict[str, Any] = {
            name: box.value for name, box in self._dropdowns.items() if box.value != ANY
        }
        if self._contains.value.strip():
            keywords["error_contains"] = self._contains.value.strip()
        since = self._since_box.value.strip() or None
        until = self._until_box.value.strip() or None
        self._guard(lambda: self.filter(since=since, until=until, **keywords))

    def _on_clear(self) -> None:
        for box in self._dropdowns.values():
            box.value = ANY
        self._contains.value = self._since_box.value = self._until_box.value = ""
        self.filter()

    def _on_confirmed(self) -> None:
        self._confirm.layout.display = "none"
        self._guard(lambda: self.replay(confirm=True))

    def _guard(self, action: Any) -> None:
        # A button must never leave a traceback in the widget: say what went wrong instead.
        try:
            action()
        except Exception as exc:
            self._status.value = f"<span style='color:#b00'>{html.escape(str(exc))}</span>"

    def _turn(self, step: int) -> None:
        pages = max((len(self._frame) - 1) // self.page_size + 1, 1)
        self.page = min(max(self.page + step, 0), pages - 1)
        self._show_table()

    def _show_status(self) -> None:
        chosen = len(self.selected)
        self._status.value = (
            f"{len(self._frame):,} of {len(self._all):,} dead letters shown "
            f"(filter: <code>{html.escape(self._describe())}</code>); "
            f"{chosen:,} selected for a dry run or replay"
        )

    def _describe(self) -> str:
        text = self._filter.describe()
        bounds = [f"{k}={v!s}" for k, v in (("since", self._since), ("until", self._until)) if v]
        return ", ".join([text, *bounds]) if bounds else text

    def _show_table(self) -> None:
        start = self.page * self.page_size
        rows = self._frame.iloc[start : start + self.page_size]
        columns = [c for c in SHOWN if c in rows.columns]
        shown = rows[columns].astype("string").fillna("")
        self._table.value = _style(shown.to_html(index=False, escape=True))
        pages = max((len(self._frame) - 1) // self.page_size + 1, 1)
        self._page_label.value = f"page {self.page + 1} of {pages}"
        self._id_box.options = list(rows["id"]) if "id" in rows.columns else []
        self._show_status()

    def _show_detail(self, dlq_id: str | None) -> None:
        if not dlq_id:
            self._detail_out.value = ""
            return
        try:
            info = self.detail(dlq_id)
        except NotFoundError as exc:
            self._detail_out.value = html.escape(str(exc))
            return
        failure = "".join(
            f"<tr><th style='text-align:left;padding-right:1em'>{html.escape(k)}</th>"
            f"<td>{html.escape(v)}</td></tr>"
            for k, v in info["failure"].items()
        )
        payload = json.dumps(info["payload"], indent=2, ensure_ascii=False, default=str)
        # Long payloads and tracebacks scroll in their own boxes, beside each other.
        box = (
            "max-height:22em;overflow:auto;margin:0;padding:.5em;background:#f7f7f7;line-height:1.3"
        )
        self._detail_out.value = (
            f"<table style='line-height:1.3'>{failure}</table>"
            "<div style='display:flex;gap:1em'>"
            f"<div style='flex:1;min-width:0'><b>payload</b><pre style='{box}'>"
            f"{html.escape(payload)}</pre></div>"
            f"<div style='flex:1;min-width:0'><b>traceback</b><pre style='{box}'>"
            f"{html.escape(info['traceback'] or '(none)')}</pre></div></div>"
        )


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _style(table: str) -> str:
    # Stream ids and times must not wrap; errors may.
    return f"<style>.sl-dlq td {{white-space: nowrap}}</style><div class='sl-dlq'>{table}</div>"
