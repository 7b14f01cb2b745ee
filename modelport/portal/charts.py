"""Server-rendered SVG charts (no charting library, no script): a line chart of training loss
and a bar chart of usage. Values are numbers only; labels are escaped by the template."""

from __future__ import annotations

from dataclasses import dataclass

WIDTH, HEIGHT, PAD = 560, 200, 32


@dataclass(frozen=True)
class Line:
    points: str  # the SVG polyline's "x,y x,y ..."
    last: tuple[float, float] | None
    y_max: float
    y_min: float
    x_max: int


def line(values: list[tuple[int, float]]) -> Line:
    if not values:
        return Line("", None, 0.0, 0.0, 0)
    xs = [x for x, _ in values]
    ys = [y for _, y in values]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    if y1 == y0:
        y1 = y0 + 1.0
    span_x = max(x1 - x0, 1)

    def pos(x: int, y: float) -> tuple[float, float]:
        return (PAD + (x - x0) / span_x * (WIDTH - 2 * PAD),
                HEIGHT - PAD - (y - y0) / (y1 - y0) * (HEIGHT - 2 * PAD))

    pts = [pos(x, y) for x, y in values]
    return Line(" ".join(f"{px:.1f},{py:.1f}" for px, py in pts), pts[-1], y1, y0, x1)


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    height: float
    label: str
    value: int


def bars(series: list[tuple[str, int]]) -> list[Bar]:
    if not series:
        return []
    top = max(v for _, v in series) or 1
    width = (WIDTH - 2 * PAD) / len(series)
    out = []
    for i, (label, v) in enumerate(series):
        h = v / top * (HEIGHT - 2 * PAD)
        out.append(Bar(PAD + i * width, HEIGHT - PAD - h, h, label, v))
    return out
