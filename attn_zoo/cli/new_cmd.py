"""``attn-zoo new NAME``: scaffold a mechanism as its own installable package.

Writes ``DIR/attn-zoo-NAME/`` with ``pyproject.toml`` (the ``attn_zoo.mechanisms`` entry point), the mechanism
(a working local window attention to edit), its tests (the conformance kit), a comparison suite and a README.
As generated it installs with ``pip install -e``, passes ``attn-zoo check NAME`` and shows in ``attn-zoo list``.
"""

from __future__ import annotations

import argparse
import re
from importlib import resources
from pathlib import Path

from attn_zoo.errors import ConfigError

# template file -> path in the project ({package} and {name} filled in)
FILES = {
    "pyproject.toml.tmpl": "pyproject.toml",
    "README.md.tmpl": "README.md",
    "compare.toml.tmpl": "compare.toml",
    "__init__.py.tmpl": "{package}/__init__.py",
    "mechanism.py.tmpl": "{package}/mechanism.py",
    "test_mechanism.py.tmpl": "tests/test_{name}.py",
}


def add_parser(sub) -> None:
    p = sub.add_parser("new", help="scaffold a new mechanism as an installable plugin package")
    p.add_argument("name", help="the mechanism's name, lower_snake_case (e.g. my_attn)")
    p.add_argument("--dir", default=".", help="where to create the project folder attn-zoo-NAME (default: here)")
    p.add_argument("--force", action="store_true", help="write into an existing, non-empty project folder")
    p.set_defaults(func=run)


def names(name: str) -> dict[str, str]:
    """The names a mechanism's package uses: ``my_attn`` -> project ``attn-zoo-my-attn``, package
    ``attn_zoo_my_attn``, class ``MyAttnAttention``."""
    camel = "".join(part.capitalize() for part in name.split("_"))
    return {
        "name": name,
        "project": f"attn-zoo-{name.replace('_', '-')}",
        "package": f"attn_zoo_{name}",
        "Class": camel if camel.endswith("Attention") else f"{camel}Attention",
    }


def scaffold(name: str, parent: str | Path = ".", force: bool = False) -> list[Path]:
    """Write the project for mechanism ``name`` under ``parent``; return the files written."""
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name) or name.endswith("_") or "__" in name:
        raise ConfigError(f"mechanism name {name!r} must be lower_snake_case: a-z, 0-9 and single _, e.g. my_attn")
    from attn_zoo.registry import list_mechanisms

    existing = list_mechanisms()
    if name in existing:
        raise ConfigError(f"mechanism {name!r} already exists ({existing[name].source}); pick another name")
    values = names(name)
    root = Path(parent) / values["project"]
    if root.exists() and any(root.iterdir()) and not force:
        raise ConfigError(f"{root} exists and is not empty; pick another --dir or name, or pass --force")
    from attn_zoo.paths import allow_writes, restore_roots, write_text

    templates = resources.files("attn_zoo") / "templates" / "mechanism"
    written = []
    with restore_roots():
        allow_writes(root)  # the project folder is the one place `new` writes
        for template, target in FILES.items():
            text = (templates / template).read_text(encoding="utf-8")
            for key, value in values.items():
                text = text.replace("{{" + key + "}}", value)
            path = root / target.format(**values)
            write_text(path, text)
            written.append(path)
    return written


def run(args: argparse.Namespace) -> int:
    written = scaffold(args.name, args.dir, args.force)
    root = written[0].parent
    print(f"created {root}/")
    for path in written:
        print(f"  {path.relative_to(root)}")
    steps = [
        f"cd {root}",
        'pip install -e ".[test]"',
        "attn-zoo list",
        "pytest",
        f"attn-zoo check {args.name}",
        "attn-zoo run compare.toml --out results",
        f"attn-zoo report results/{args.name}_vs_baselines.sqlite",
    ]
    print("\nnext:\n" + "\n".join(f"  {step}" for step in steps))
    return 0
