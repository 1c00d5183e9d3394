"""Measure: a JSONL data file written as CSV and read back — how many records are refused, how many change.

A record "changes" when its transcript, id or training target (`Example.rating()`: the answer the model is
trained to give) differs from the JSONL one's. Two ways of writing the CSV:

  guide   lists joined with ';', as the training guide shows (the only form before JSON-array cells)
  hcp     what hcp writes (`write_records`): lists as JSON arrays

    python scripts/csv_round_trip.py data/sample_training_data.jsonl --form guide
    python scripts/csv_round_trip.py data/sample_training_data.jsonl --form hcp
"""

from __future__ import annotations

import argparse
import csv
import tempfile
from pathlib import Path

from hcp.config import load_config
from hcp.data.dataset import load_dataset, read_rows, require_valid
from hcp.rubric import Rubric


def write_guide_csv(path: Path, records: list[dict]) -> None:
    columns = list(dict.fromkeys(name for record in records for name in record))
    with path.open("w", newline="", encoding="utf-8") as out:
        writer = csv.DictWriter(out, fieldnames=columns)
        writer.writeheader()
        for record in records:
            writer.writerow({k: ";".join(v) if isinstance(v, list) else v for k, v in record.items()})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("--form", choices=["guide", "hcp"], default="hcp")
    args = parser.parse_args()

    rubric = Rubric.from_config(load_config())
    examples = require_valid(load_dataset(args.data, rubric))
    records = [e.to_record() for e in examples]
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "data.csv"
        if args.form == "guide":
            write_guide_csv(path, records)
        else:
            from hcp.data.dataset import write_records

            write_records(path, records)
        back = load_dataset(path, rubric)
        starts = [line for line, _ in read_rows(path)]  # the line each CSV row starts on: transcripts span lines
    refused = len({p.line for p in back.problems})
    read = {starts.index(e.line): e for e in back.examples}  # record index -> the example read back
    changed = sum(1 for i, e in enumerate(examples) if i in read
                  and (read[i].transcript, read[i].id, read[i].rating()) != (e.transcript, e.id, e.rating()))
    print(f"{len(examples)} records, CSV written the {args.form} way: {refused} refused, {changed} of the "
          f"{len(back.examples)} accepted changed")


if __name__ == "__main__":
    main()
