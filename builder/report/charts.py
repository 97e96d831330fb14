"""Geometry of the report's inline SVG charts: positions and sizes are computed here, in Python,
and the template turns them into markup (so that every label goes through its autoescaping).

Coordinates are SVG user units; the template scales each chart to its column with a viewBox,
so 1 unit is about 1 CSS pixel on a 1280 px wide page.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

#: Bars a chart shows at most; the rest are summed into one "others" bar, so that a release
#: with 150 categories still gives a chart a person can read.
DEFAULT_TOP_BARS = 25
BAR_CHART_WIDTH = 600
LABEL_WIDTH = 170
VALUE_WIDTH = 56
BAR_HEIGHT = 16
BAR_GAP = 6
#: Labels longer than this are cut with an ellipsis; the full label is the bar's tooltip.
LABEL_CHARS = 26


@dataclass(frozen=True)
class Series:
    """One stacked part of every bar (normal and anomalous samples, say), with its CSS class."""

    key: str
    legend: str
    css: str


@dataclass(frozen=True)
class Segment:
    x: float
    width: float
    value: int
    css: str
    title: str


@dataclass(frozen=True)
class Bar:
    label: str  # as drawn, maybe cut
    title: str  # the full label and its counts, as the tooltip
    total: int
    y: float
    end: float  # where the last segment ends, for the value written after it
    segments: tuple[Segment, ...]
    others: bool


@dataclass(frozen=True)
class Tick:
    position: float
    label: str


@dataclass(frozen=True)
class BarChart:
    """A horizontal bar chart, bars sorted by count, largest first."""

    title: str
    axis_label: str
    bars: tuple[Bar, ...]
    ticks: tuple[Tick, ...]
    legend: tuple[Series, ...]
    note: str
    width: int
    height: float
    plot_left: float
    plot_right: float
    plot_top: float
    plot_bottom: float
    bar_height: float


def nice_step(span: float, target_ticks: int = 5) -> float:
    """A step of 1, 2 or 5 times a power of ten that cuts `span` into about `target_ticks`."""
    if span <= 0:
        return 1.0
    raw = span / target_ticks
    magnitude = 10 ** math.floor(math.log10(raw))
    multiple = next(m for m in (1, 2, 5, 10) if raw <= m * magnitude)
    return max(1.0, multiple * magnitude)  # counts: never a fractional step


def count_ticks(maximum: int, target_ticks: int = 5) -> list[int]:
    """Tick values from 0 to the first multiple of the step at or above `maximum`."""
    step = nice_step(maximum, target_ticks)
    top = max(step, math.ceil(maximum / step) * step)
    return [round(i * step) for i in range(round(top / step) + 1)]


def format_count(value: int) -> str:
    return f"{value:,}"


def short_label(label: str, limit: int = LABEL_CHARS) -> str:
    return label if len(label) <= limit else label[: limit - 1] + "…"


def bar_chart(
    title: str,
    counts: Mapping[str, Mapping[str, int]],
    series: Sequence[Series],
    *,
    axis_label: str,
    top: int = DEFAULT_TOP_BARS,
    unit: str = "",
) -> BarChart:
    """Bars for `counts` (label -> series key -> count), stacked in the order of `series`.

    Sorted by total, largest first, ties by label; past `top` bars, the smallest are summed
    into one "others" bar whose label says how many it holds.
    """
    totals = {label: sum(parts.values()) for label, parts in counts.items()}
    ordered = sorted(counts, key=lambda label: (-totals[label], label))
    rows: list[tuple[str, Mapping[str, int], bool]] = [
        (label, counts[label], False) for label in ordered
    ]
    note = ""
    if len(rows) > top:
        kept, rest = rows[: top - 1], rows[top - 1 :]
        summed = {s.key: sum(parts.get(s.key, 0) for _, parts, _ in rest) for s in series}
        rows = [*kept, (f"others ({len(rest):,} more)", summed, True)]
        note = f"the {top - 1} largest of {len(ordered):,}; the other {len(rest):,} summed"
    maximum = max((sum(parts.values()) for _, parts, _ in rows), default=0)
    ticks = count_ticks(maximum)
    plot_left, plot_right = float(LABEL_WIDTH), float(BAR_CHART_WIDTH - VALUE_WIDTH)
    plot_top = 8.0
    scale = (plot_right - plot_left) / ticks[-1]
    bars = []
    for index, (label, parts, others) in enumerate(rows):
        y = plot_top + index * (BAR_HEIGHT + BAR_GAP)
        x = plot_left
        segments = []
        for part in series:
            value = int(parts.get(part.key, 0))
            if value:
                width = value * scale
                segments.append(
                    Segment(round(x, 2), round(width, 2), value, part.css,
                            f"{label}: {format_count(value)} {part.legend}")
                )  # fmt: skip
                x += width
        total = sum(int(value) for value in parts.values())
        breakdown = ", ".join(
            f"{format_count(int(parts.get(part.key, 0)))} {part.legend}" for part in series
        )
        tooltip = f"{label}: {format_count(total)}{unit}" + (
            f" ({breakdown})" if len(series) > 1 else ""
        )
        bars.append(
            Bar(short_label(label), tooltip, total, y, round(x, 2), tuple(segments), others)
        )
    plot_bottom = plot_top + max(len(rows), 1) * (BAR_HEIGHT + BAR_GAP) - BAR_GAP
    return BarChart(
        title=title,
        axis_label=axis_label,
        bars=tuple(bars),
        ticks=tuple(Tick(round(plot_left + v * scale, 2), format_count(v)) for v in ticks),
        legend=tuple(series) if len(series) > 1 else (),
        note=note,
        width=BAR_CHART_WIDTH,
        height=plot_bottom + 44,  # tick labels and the axis title below the plot
        plot_left=plot_left,
        plot_right=plot_right,
        plot_top=plot_top,
        plot_bottom=plot_bottom,
        bar_height=BAR_HEIGHT,
    )


# --------------------------------------------------------------------------------------
# The histogram of mask areas, on log-scaled bins
# --------------------------------------------------------------------------------------

#: Area fractions from 10^-5 (a 3×3 px speck on a 1024² image) to the whole image.
AREA_LOWEST_DECADE = -5
AREA_BINS_PER_DECADE = 4
AREA_BIN_COUNT = -AREA_LOWEST_DECADE * AREA_BINS_PER_DECADE


def area_bin(area_fraction: float) -> int:
    """The bin of a positive area fraction; smaller than 10^-5 falls into the first."""
    position = (math.log10(area_fraction) - AREA_LOWEST_DECADE) * AREA_BINS_PER_DECADE
    return min(max(math.floor(position), 0), AREA_BIN_COUNT - 1)


def area_bin_edges() -> list[float]:
    return [
        10 ** (AREA_LOWEST_DECADE + i / AREA_BINS_PER_DECADE) for i in range(AREA_BIN_COUNT + 1)
    ]


def percent(fraction: float) -> str:
    """0.00001 -> '0.001%', 0.5 -> '50%': as few digits as the value needs."""
    value = fraction * 100
    return f"{value:.{max(0, -math.floor(math.log10(value)))}f}%" if value < 1 else f"{value:g}%"


@dataclass(frozen=True)
class Column:
    x: float
    y: float
    width: float
    height: float
    count: int
    title: str


@dataclass(frozen=True)
class Histogram:
    title: str
    x_label: str
    y_label: str
    columns: tuple[Column, ...]
    x_ticks: tuple[Tick, ...]
    y_ticks: tuple[Tick, ...]
    width: int
    height: int
    plot_left: float
    plot_right: float
    plot_top: float
    plot_bottom: float
    total: int


def area_histogram(bin_counts: Sequence[int], title: str) -> Histogram:
    """Columns for the area-fraction bins (`area_bin`), x ticks at each power of ten."""
    width, height = 460, 300
    # Room on the left for tick labels up to "10,000" beside the rotated axis title.
    plot_left, plot_right, plot_top, plot_bottom = 68.0, 444.0, 12.0, 240.0
    edges = area_bin_edges()
    y_values = count_ticks(max(bin_counts, default=0), 4)
    y_scale = (plot_bottom - plot_top) / y_values[-1]
    step = (plot_right - plot_left) / len(bin_counts)
    columns = []
    for index, count in enumerate(bin_counts):
        low = "0" if index == 0 else percent(edges[index])
        column_height = count * y_scale
        columns.append(
            Column(
                x=round(plot_left + index * step + 1, 2),
                y=round(plot_bottom - column_height, 2),
                width=round(step - 2, 2),
                height=round(column_height, 2),
                count=count,
                title=f"{low} to {percent(edges[index + 1])} of the image: "
                f"{format_count(count)} masks",
            )
        )
    x_ticks = tuple(
        Tick(round(plot_left + i * AREA_BINS_PER_DECADE * step, 2),
             percent(10.0 ** (AREA_LOWEST_DECADE + i)))
        for i in range(-AREA_LOWEST_DECADE + 1)
    )  # fmt: skip
    y_ticks = tuple(Tick(round(plot_bottom - v * y_scale, 2), format_count(v)) for v in y_values)
    return Histogram(
        title=title,
        x_label="mask area, share of the image (log scale)",
        y_label="anomalous samples",
        columns=tuple(columns),
        x_ticks=x_ticks,
        y_ticks=y_ticks,
        width=width,
        height=height,
        plot_left=plot_left,
        plot_right=plot_right,
        plot_top=plot_top,
        plot_bottom=plot_bottom,
        total=sum(bin_counts),
    )


# --------------------------------------------------------------------------------------
# Where defects lie: a heat map over the image frame, and the 3×3 grid cells
# --------------------------------------------------------------------------------------

#: A light-to-dark ramp (yellow, orange, red), so that an empty cell reads as "nothing here".
RAMP: tuple[tuple[float, tuple[int, int, int]], ...] = (
    (0.0, (247, 247, 247)),
    (0.15, (254, 232, 168)),
    (0.4, (253, 174, 97)),
    (0.7, (227, 74, 51)),
    (1.0, (127, 0, 0)),
)


def ramp_colour(value: float) -> str:
    """Hex colour of `value` in [0, 1] on RAMP."""
    value = min(max(value, 0.0), 1.0)
    for (low, low_colour), (high, high_colour) in itertools.pairwise(RAMP):
        if value <= high:
            share = (value - low) / (high - low)
            channels = (
                round(a + (b - a) * share) for a, b in zip(low_colour, high_colour, strict=True)
            )
            return "#" + "".join(f"{channel:02x}" for channel in channels)
    return "#{:02x}{:02x}{:02x}".format(*RAMP[-1][1])


@dataclass(frozen=True)
class Cell:
    x: float
    y: float
    size: float
    colour: str


@dataclass(frozen=True)
class HeatMap:
    cells: tuple[Cell, ...]
    size: float  # side of the square frame
    thirds: tuple[float, ...]  # where the 3×3 grid lines go
    legend: tuple[tuple[float, str], ...]  # (offset 0..1, colour) stops of the scale
    peak: float  # the largest mean coverage, which the darkest colour stands for
    masks: int


def heat_map(coverage_sum: np.ndarray, masks: int, size: float = 288) -> HeatMap:
    """Cells of the mean mask coverage (`coverage_sum / masks`), scaled to its peak.

    Empty cells are left out: the frame behind them is drawn in the colour of zero, which
    keeps a 32×32 map under a thousand rectangles.
    """
    mean = coverage_sum / masks if masks else np.zeros_like(coverage_sum)
    peak = float(mean.max()) if mean.size else 0.0
    rows, columns = mean.shape
    side = size / max(rows, columns)
    cells = []
    if peak > 0:
        for row in range(rows):
            for column in range(columns):
                value = float(mean[row, column]) / peak
                if value > 0:
                    cells.append(
                        Cell(round(column * side, 2), round(row * side, 2), round(side + 0.01, 2),
                             ramp_colour(value))
                    )  # fmt: skip
    legend = tuple((offset, ramp_colour(offset)) for offset, _ in RAMP)
    return HeatMap(
        cells=tuple(cells),
        size=size,
        thirds=(round(size / 3, 2), round(2 * size / 3, 2)),
        legend=legend,
        peak=peak,
        masks=masks,
    )


@dataclass(frozen=True)
class GridCell:
    word: str
    count: int
    share: str
    colour: str
    dark: bool  # light text on a dark cell


def grid_table(
    counts: Mapping[str, int], words: Sequence[str], samples: int
) -> list[list[GridCell]]:
    """The 3×3 grid, row by row: how many anomalous samples reach each cell."""
    peak = max((counts.get(word, 0) for word in words), default=0)
    cells = []
    for word in words:
        count = counts.get(word, 0)
        value = count / peak if peak else 0.0
        share = f"{count / samples:.0%}" if samples else "–"
        cells.append(GridCell(word, count, share, ramp_colour(value), value > 0.55))
    return [cells[i : i + 3] for i in range(0, len(cells), 3)]
