"""Reads a `polybook export` Parquet file with pyarrow and checks it against the CSV export
of the same data: same columns, same rows, every value equal as text (null = empty field),
times as unsigned 64-bit integers and prices/sizes as strings (exact decimals, never floats).

    python3 check_export.py FILE.parquet FILE.csv
"""

import csv
import sys

import pyarrow as pa
import pyarrow.parquet as pq


def main() -> int:
    table = pq.read_table(sys.argv[1])
    for field in table.schema:
        want = pa.uint64() if field.name in ("recv_ns", "venue_ts_ms", "level") else pa.string()
        if field.type != want:
            print(f"{field.name}: {field.type}, want {want}", file=sys.stderr)
            return 1
    with open(sys.argv[2], newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        csv_rows = [[v if v != "" else None for v in row] for row in reader]
    if header != table.column_names:
        print(f"columns {table.column_names} != {header}", file=sys.stderr)
        return 1
    cols = [table.column(n).to_pylist() for n in header]
    pq_rows = [[None if v is None else str(v) for v in row] for row in zip(*cols)]
    if pq_rows != csv_rows:
        bad = next(i for i, (a, b) in enumerate(zip(pq_rows, csv_rows)) if a != b) \
            if len(pq_rows) == len(csv_rows) else "length"
        print(f"rows differ ({len(pq_rows)} vs {len(csv_rows)}; first at {bad})", file=sys.stderr)
        return 1
    print(f"{sys.argv[1]}: {table.num_rows} rows equal to the CSV")
    return 0


if __name__ == "__main__":
    sys.exit(main())
