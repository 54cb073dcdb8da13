"""`Table`: a DataFrame an investigator can read, for summaries and try-handler tables.

Plain pandas cuts every text at ``display.max_colwidth`` (50 characters: the hash at the end of
an error signature is lost), writes ``NaN`` / ``<NA>`` / ``NaT`` in empty cells and lets a
browser wrap a stream id at its hyphen. A `Table` is a DataFrame in every other respect
(``assert_frame_equal`` against a DataFrame holds); only its displays differ: no cell is cut,
blanks are blank, ids stay on one line. Frames derived from it (``head``, a filter) keep that.
"""

from __future__ import annotations

import uuid
from typing import Any

import pandas as pd

__all__ = ["Table", "table"]


def _id_column(name: Any) -> bool:
    return isinstance(name, str) and (name == "id" or name.endswith("_id"))


class Table(pd.DataFrame):
    """A DataFrame shown whole: no cell cut short, blanks blank, stream ids on one line."""

    @property
    def _constructor(self) -> type[Table]:
        return Table

    def _view(self) -> Any:
        # NA of nullable ints and booleans prints as <NA> whatever na_rep says.
        view: Any = pd.DataFrame(self)
        for position, dtype in enumerate(view.dtypes):
            if isinstance(dtype, pd.api.extensions.ExtensionDtype) and not isinstance(
                dtype, pd.CategoricalDtype | pd.StringDtype | pd.DatetimeTZDtype
            ):
                column = view.iloc[:, position]
                if column.isna().any():
                    view.isetitem(position, column.astype(object).where(column.notna(), ""))
        return view

    def __repr__(self) -> str:
        text: str = self._view().to_string(
            na_rep="",
            max_rows=pd.get_option("display.max_rows"),
            min_rows=pd.get_option("display.min_rows"),
            max_cols=pd.get_option("display.max_columns"),
            show_dimensions=pd.get_option("display.show_dimensions"),
            line_width=pd.get_option("display.width"),
            max_colwidth=None,
        )
        return text

    def _repr_html_(self) -> str | None:
        if not pd.get_option("display.notebook_repr_html"):
            return None
        table_id = f"streamlab-{uuid.uuid4().hex[:12]}"
        with pd.option_context("display.max_colwidth", None):
            body: str = self._view().to_html(
                na_rep="",
                notebook=True,
                table_id=table_id,
                max_rows=pd.get_option("display.max_rows"),
                max_cols=pd.get_option("display.max_columns"),
                show_dimensions=pd.get_option("display.show_dimensions"),
            )
        # The index is each row's first cell: a column's cells are child (position + 2).
        cells = ", ".join(
            f"#{table_id} tbody td:nth-child({i + 2})"
            for i, name in enumerate(self.columns)
            if _id_column(name)
        )
        style = f"<style>{cells} {{white-space: nowrap}}</style>" if cells else ""
        return style + body


def table(df: pd.DataFrame) -> Table:
    """``df`` as a `Table` (no copy of the data)."""
    return Table(df)
