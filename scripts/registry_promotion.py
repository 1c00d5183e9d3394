"""Register existing exports as versions of one name, for `hcp models promote` to compare them.

Each GGUF is registered with the Modelfile beside it and, where given, the adapter folder it came from (its
training_config.json and metrics.json fill the manifest). The first becomes the promoted version of the name,
the others candidates. Used for the closing note's promotion report:

    python scripts/registry_promotion.py --registry bench/registry --name hcp-rater \
        classic/export/hcp-rater.Q8_0.gguf:classic/adapter varied/export/hcp-rater.Q8_0.gguf:varied/adapter
    hcp data sample --n 60 --seed 7 --out held-out.jsonl
    HCP_REGISTRY=bench/registry hcp models promote hcp-rater:2 --data held-out.jsonl --threads 2
"""

from __future__ import annotations

import argparse
from pathlib import Path

from hcp.registry import open_registry
from hcp.registry.lifecycle import register_version


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--registry", type=Path, required=True)
    parser.add_argument("--name", default="hcp-rater")
    parser.add_argument("exports", nargs="+", help="GGUF[:ADAPTER_FOLDER], the Modelfile beside the GGUF")
    args = parser.parse_args()
    registry = open_registry(args.registry)
    for export in args.exports:
        gguf, _, source = export.partition(":")
        path = Path(gguf)
        change = register_version(registry, args.name, path, path.parent / "Modelfile",
                                  source=Path(source) if source else None)
        print(f"{change.version.label}: {'promoted' if change.promoted else 'candidate'} <- {path}")


if __name__ == "__main__":
    main()
