"""How the dashboard writes numbers, times, statuses, run names, user text and errors: one spelling for every page.

User text (run names, model ids, paths, user names, error messages that quote them) never reaches Markdown raw:
`md` escapes it and `code` puts it in a code span it cannot leave, so a name like `![x](http://…)` shows as those
characters, not as an image that makes every viewer's browser fetch a URL.

Pure functions and tables (plus `styled`, which builds what st.dataframe shows); no engine
calls. Tables show a missing value as "—", never "None", and sizes as "1.54 MB", never a raw byte count.
"""
from __future__ import annotations

import math
import re
import time

from lora_core.errors import LoraLabError
from lora_ui.service import RunStatus

STATUS_ICON = {RunStatus.QUEUED: "⏳", RunStatus.RUNNING: "🏃", RunStatus.SUCCEEDED: "✅", RunStatus.FAILED: "❌",
               RunStatus.STOPPED: "⏹️"}

# The x-axes a metrics chart can use: event key -> what the axis is called.
X_AXES = {"step": "step", "epoch": "epoch", "elapsed_s": "wall time (s)"}

# How numeric columns of run tables are shown, by column name (Runs and Compare share the names).
NUMBER_FORMATS = {
    "trainable": "localized", "trainable %": "%.3f%%", "accuracy": "%.4f", "macro-F1": "%.4f",
    "eval loss": "%.4f", "train time (s)": "%.1f", "peak mem (GB)": "%.3f", "est. peak (GB)": "%.3f",
    "adapter (MB)": "%.2f", "vs full: accuracy": "%.3f×", "vs full: time": "%.3f×",
    "vs full: trainable": "%.5f×", "vs full: memory": "%.3f×",
    # seed groups: a metric's std across seeds sits beside its mean, in the same format
    "accuracy ±": "%.4f", "macro-F1 ±": "%.4f", "eval loss ±": "%.4f", "perplexity": "%.3f", "perplexity ±": "%.3f",
    "train time (s) ±": "%.1f",
}


# -- numbers and times -----------------------------------------------------------------------------------------

def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def fmt_bytes(n: float | None) -> str:
    if _missing(n):
        return "—"
    n = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    return f"{n:.2f} TB"


def fmt_count(n: float | None) -> str:
    if _missing(n):
        return "—"
    n = float(n)
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return f"{n:.0f}"


def fmt_duration(seconds: float | None) -> str:
    if _missing(seconds):
        return "—"
    seconds = max(0, int(round(seconds)))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h {m:02d}m" if h else (f"{m}m {s:02d}s" if m else f"{s}s")


def fmt_time(ts: float | str | None) -> str:
    if ts in (None, ""):
        return "—"
    if isinstance(ts, str):
        return ts.replace("T", " ")[:19]
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def _printf(fmt: str):
    if fmt == "localized":
        return lambda v: f"{v:,.0f}"
    return lambda v: fmt % v


def styled(frame, bytes_columns: tuple[str, ...] = ()):
    """The frame as st.dataframe should show it: run-table numbers in their formats, `bytes_columns` as sizes,
    and "—" for every missing value (the data underneath stays numeric, so columns still sort by value)."""
    formats = {name: _printf(fmt) for name, fmt in NUMBER_FORMATS.items() if name in frame.columns}
    formats.update({name: fmt_bytes for name in bytes_columns if name in frame.columns})
    # every other cell: whole numbers without decimals (a rank column with gaps is float), the rest as written
    return frame.style.format({name: formats.get(name, _plain) for name in frame.columns}, na_rep="—")


def _plain(value) -> str:
    if isinstance(value, float):
        return f"{value:.0f}" if value.is_integer() else f"{value:.4g}"
    return str(value)


# -- runs ------------------------------------------------------------------------------------------------------

def status_text(status: str) -> str:
    """'✅ SUCCEEDED': the icon and the status name."""
    return f"{STATUS_ICON.get(status, '')} {RunStatus(status).value}"


def method_text(rec) -> str:
    """'lora r=8', or the method alone when it has no rank."""
    return rec.method + (f" r={rec.lora_r}" if rec.lora_r else "")


def run_label(rec, show_task: bool = False) -> str:
    """How a run is named in pickers: 'name · [task ·] method r=8 · id'."""
    return f"{rec.name} · {rec.task + ' · ' if show_task else ''}{method_text(rec)} · {rec.id}"


def primary_metric(results: dict | None) -> tuple[str, float | None]:
    """(name, value) of the headline eval metric: accuracy for classification, eval loss for causal LM."""
    if not results:
        return "accuracy", None
    metrics = results.get("metrics") if isinstance(results.get("metrics"), dict) else results
    for key in ("eval_accuracy", "accuracy"):
        if metrics.get(key) is not None:
            return "accuracy", float(metrics[key])
    if metrics.get("eval_loss") is not None:
        return "eval loss", float(metrics["eval_loss"])
    return "accuracy", None


# -- user text -------------------------------------------------------------------------------------------------

# Characters that start inline Markdown or Streamlit syntax anywhere in a line: code, emphasis, links and images
# ([...](...), ![...](...)), HTML, tables, strikethrough, $math$. A Streamlit directive (:red[...]) needs "[".
_INLINE = re.compile(r"([\\`*\[\]<>!|~$]|(?<![A-Za-z0-9])_|_(?![A-Za-z0-9]))")  # an intraword _ is plain
FENCE = "`" * 3
_JOIN = "\u2060"  # WORD JOINER: invisible, and breaks what GFM reads as a URL
_BLOCK_START = re.compile(r"^([#+\->=]|\d+[.)])")  # headings, lists, quotes: only at the start of a line


def md(text) -> str:
    """User text, escaped to show as itself inside st.markdown / st.caption / st.error / labels (one line).
    CommonMark shows a backslash-escaped punctuation mark as the mark. GFM links bare URLs in the text after
    escapes, so http:// and www. get an invisible word joiner; e-mail addresses (user names) stay copyable, and
    may show as mailto: links."""
    line = _INLINE.sub(r"\\\1", " ".join(str(text).split()))
    line = line.replace("://", f"{_JOIN}://").replace("www.", f"www{_JOIN}.").replace("@", "\\@")
    return _BLOCK_START.sub(lambda m: m.group(1)[:-1] + "\\" + m.group(1)[-1], line)


def code(text) -> str:
    """User text as an inline code span (where Markdown reads nothing): backticks in it become quotes."""
    return "`" + " ".join(str(text).replace("`", "'").split()) + "`"


# -- errors and messages -------------------------------------------------------------------------------------

def error_text(exc: BaseException) -> str:
    """One readable line for any error. Engine errors (LoraLabError) already say what is wrong and name the
    field; anything else is unexpected, so its type is kept in front of the message."""
    if isinstance(exc, LoraLabError):
        return str(exc).strip() or type(exc).__name__
    if isinstance(exc, KeyError) and exc.args:
        return str(exc.args[0])
    return f"{type(exc).__name__}: {str(exc).strip()}"


def message_markdown(text: str, escape: bool = False) -> str:
    """A message as markdown that keeps its shape: the first line as it is, a list of problems ("  - ..." lines)
    as bullets, any other lines after it (a parser's excerpt with its caret) in a code block. `escape`: the text
    is not markdown (an error quoting user text): each line shows as itself (md), and a fence in the excerpt
    cannot end its code block."""
    head, *rest = str(text).rstrip().split("\n")
    line = md if escape else str
    if not rest:
        return line(head)
    if all(item.startswith("  - ") for item in rest):
        return line(head) + "\n" + "\n".join("- " + line(item[4:]) for item in rest)
    excerpt = "\n".join(rest)
    if escape:
        excerpt = excerpt.replace(FENCE, "'" * 3)
    return line(head) + "\n" + FENCE + "text\n" + excerpt + "\n" + FENCE

