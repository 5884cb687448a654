#!/usr/bin/env bash
# mypy names a module after its path (operator/x.py is `operator.x`) and has no setting that maps
# a directory onto another package name, and it cannot follow the import hook of the editable
# install. So check the package through a tree of symlinks laid out the way Python imports it,
# built from pyproject.toml's [tool.setuptools.package-dir] (the one place the mapping is written).
set -euo pipefail
cd "$(dirname "$0")/.."
tree=build/mypy-src
rm -rf "$tree" && mkdir -p "$tree"
PYTHONSAFEPATH=1 .venv/bin/python - "$tree" <<'EOF'
import sys
import tomllib
from pathlib import Path

tree = Path(sys.argv[1])
package_dir = tomllib.loads(Path("pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
# Parents before children: "tac2sol" is a real folder holding links to its files and subpackages.
for package, directory in sorted(package_dir.items()):
    link = tree.joinpath(*package.split("."))
    if "." in package:
        link.symlink_to(Path(directory).resolve(), target_is_directory=True)
        continue
    link.mkdir(parents=True)
    for source in Path(directory).glob("*.py"):
        (link / source.name).symlink_to(source.resolve())
EOF
cd "$tree"
# The cache lives outside the tree, which is made afresh each run.
MYPY_CACHE_DIR=$OLDPWD/build/mypy-cache exec "$OLDPWD/.venv/bin/mypy" --config-file "$OLDPWD/pyproject.toml" -p tac2sol "$@"
