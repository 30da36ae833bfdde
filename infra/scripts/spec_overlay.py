"""Write a copy of a pipeline spec with a few fields changed, e.g. `serving.host=model-server`.

The deployments under infra/ run the one spec of configs/ in places that differ only in
where the inference server is (`release` and `rollback` tell it to reload at
`serving.url`, from another container than the server's) or in how a server splits its
traffic (`serving.canary_share`). Deriving those copies when a container starts keeps
configs/ the only place a spec is edited. The result is validated like any spec.

    python infra/scripts/spec_overlay.py configs/support-tickets.yaml \
        serving.host=model-server --output deploy/support-tickets.yaml
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml


def overlay(spec: dict, assignments: list[str]) -> dict:
    """Set each `section.field=value` (value parsed as YAML) in `spec`, in place.

    Raises:
        ValueError: an assignment without `=`, or a path through a non-mapping field.
    """
    for assignment in assignments:
        key, sep, raw = assignment.partition("=")
        if not sep or not key:
            raise ValueError(f"{assignment!r}: expected section.field=value")
        *parents, leaf = key.split(".")
        node = spec
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"{assignment!r}: {part} is not a section")
        node[leaf] = yaml.safe_load(raw)
    return spec


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec", help="the spec to start from, e.g. configs/support-tickets.yaml")
    parser.add_argument("assignments", nargs="+", metavar="section.field=value")
    parser.add_argument("--output", "-o", required=True, help="where to write the copy")
    args = parser.parse_args(argv)
    try:
        spec = overlay(yaml.safe_load(Path(args.spec).read_text()), args.assignments)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        print(f"spec_overlay: {exc}", file=sys.stderr)
        return 1
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        f"# Written by infra/scripts/spec_overlay.py from {args.spec}: "
        f"{' '.join(args.assignments)}\n" + yaml.safe_dump(spec, sort_keys=False)
    )
    from attnops.spec import SpecError, load_spec  # the project is installed where this runs

    try:
        load_spec(out)
    except SpecError as exc:
        print(f"spec_overlay: {exc}", file=sys.stderr)
        return 1
    print(f"{out}: {args.spec} with {', '.join(args.assignments)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
