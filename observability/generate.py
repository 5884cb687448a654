"""Write the generated observability files: dashboards JSON and alert rules.

    python -m tac2sol.observability.generate [--root DIR]

``outputs()`` is the single list of what is generated; the drift test compares it with the files.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tac2sol.observability import dashboards, rules

DASHBOARD_DIR = Path("charts/tac2sol/files/dashboards")
CHART_RULES = Path("charts/tac2sol/files/rules/tac2sol.rules.yaml")
PLAIN_RULES = Path("manifests/prometheus/tac2sol.rules.yaml")


def outputs() -> dict[Path, str]:
    """Repository-relative path -> content."""
    files = {DASHBOARD_DIR / spec.filename: dashboards.render(spec) for spec in dashboards.DASHBOARDS}
    text = rules.render()
    files[CHART_RULES] = text
    files[PLAIN_RULES] = text
    return files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path.cwd(), help="repository root (default: .)")
    root = parser.parse_args().root
    for rel, content in outputs().items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists() or path.read_text() != content:
            path.write_text(content)
            print(f"wrote {rel}")


if __name__ == "__main__":
    main()
