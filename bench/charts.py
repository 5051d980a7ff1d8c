"""SVG bar charts of a run's main figures, one bar per peer, for bench/README.md.

Written by hand (some forty lines of SVG) rather than with matplotlib: the bench must run
on a bare machine with only Python's standard library, and the charts are plain bars."""
from html import escape
from pathlib import Path

WIDTH = 560
BAR_H = 26
GAP = 10
LABEL_W = 190
TOP = 34
COLORS = {"wsgate": "#2b6cb0", "other": "#a0aec0"}


def bar_chart(title, unit, bars, lower_is_better):
    """`bars`: [(label, value or None, is_wsgate)]. Returns the SVG text."""
    shown = [(label, v, ours) for label, v, ours in bars if v is not None]
    height = TOP + len(shown) * (BAR_H + GAP) + 12
    top = max((v for _, v, _ in shown), default=1) or 1
    span = WIDTH - LABEL_W - 90
    hint = "lower is better" if lower_is_better else "higher is better"
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        f'viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="13">',
        f'<rect width="{WIDTH}" height="{height}" fill="#ffffff"/>',
        f'<text x="8" y="20" font-weight="bold">{escape(title)}</text>',
        f'<text x="{WIDTH - 8}" y="20" text-anchor="end" fill="#4a5568">{hint}</text>',
    ]
    for i, (label, v, ours) in enumerate(shown):
        y = TOP + i * (BAR_H + GAP)
        w = max(1, round(span * v / top))
        color = COLORS["wsgate" if ours else "other"]
        out += [
            f'<text x="{LABEL_W - 8}" y="{y + BAR_H * 0.68:.0f}" text-anchor="end">{escape(label)}</text>',
            f'<rect x="{LABEL_W}" y="{y}" width="{w}" height="{BAR_H}" fill="{color}"/>',
            f'<text x="{LABEL_W + w + 6}" y="{y + BAR_H * 0.68:.0f}">{v:,.{0 if v >= 100 else 2}f} {escape(unit)}</text>',
        ]
    out.append("</svg>")
    return "\n".join(out) + "\n"


def write_charts(directory, charts):
    """`charts`: {file stem: (title, unit, bars, lower_is_better)}; returns README lines
    linking the charts that have at least one bar."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    lines = []
    for stem, (title, unit, bars, lower) in charts.items():
        if not any(v is not None for _, v, _ in bars):
            continue
        (directory / f"{stem}.svg").write_text(bar_chart(title, unit, bars, lower))
        lines.append(f"![{title}](charts/{stem}.svg)")
    return lines
