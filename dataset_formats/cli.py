"""`nextquill-data`: build NextQuill training data from Amazon Reviews 2023 files.

nextquill-data build --reviews Books.jsonl.gz --meta meta_Books.jsonl.gz --out data/books
nextquill-data convert-dpl --rows dpl_train.jsonl --meta dpl_meta.jsonl --out data/dpl/train.jsonl
nextquill-data synthetic --out raw/         (raw files with planted preferences, for trials)
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields
from pathlib import Path

from .builder import BuildError, BuildOptions, build

DEMO_DATA = Path(__file__).parent / "demo_data"
DEMO_REVIEWS = DEMO_DATA / "Books_demo.jsonl.gz"
DEMO_META = DEMO_DATA / "meta_Books_demo.jsonl.gz"


def _add_build_options(parser: argparse.ArgumentParser) -> None:
    defaults = BuildOptions()
    for f in fields(BuildOptions):
        if f.name in ("strict", "show_progress"):
            continue
        flag = "--" + f.name.replace("_", "-")
        parser.add_argument(
            flag,
            type=type(getattr(defaults, f.name)),
            default=getattr(defaults, f.name),
            help=f"default: {getattr(defaults, f.name)}",
        )
    parser.add_argument(
        "--strict", action="store_true", help="turn every skipped line into an error"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress output")


def write_jsonl_gz(path: Path, records: list[dict]) -> None:
    import gzip

    path.parent.mkdir(parents=True, exist_ok=True)
    # mtime=0: the same records give the same bytes.
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as handle:
        for record in records:
            handle.write((json.dumps(record, sort_keys=True) + "\n").encode())


def convert_dpl(rows_path: Path, meta_path: Path, out_path: Path) -> int:
    """DPL release rows (user_id, profile, data) + item meta (asin, title, description) -> our rows."""
    from .builder import iter_json_lines, join_description

    items = {}
    for _, raw in iter_json_lines(meta_path):
        obj = json.loads(raw)
        items[obj["asin"]] = obj

    def review(r: dict) -> dict:
        meta = items.get(r["asin"], {})
        return {
            "item_id": r["asin"],
            "item_title": meta.get("title") or "",
            "item_description": join_description(meta.get("description")) or "",
            "rating": r.get("rating"),
            "title": r.get("title") or "",
            "text": r.get("text") or "",
            "timestamp": r.get("timestamp"),
        }

    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_suffix(out_path.suffix + ".tmp")
    n = 0
    with open(tmp, "w") as handle:
        for line_no, raw in iter_json_lines(rows_path):
            try:
                row = json.loads(raw)
                out = {
                    "user_id": row["user_id"],
                    "target": review(row["data"]),
                    "history": sorted(
                        (review(r) for r in row["profile"]), key=lambda r: r["timestamp"] or 0
                    ),
                }
            except (KeyError, TypeError, json.JSONDecodeError) as error:
                raise BuildError(f"{rows_path.name}:{line_no}: not a DPL row ({error})") from error
            handle.write(json.dumps(out) + "\n")
            n += 1
    tmp.replace(out_path)
    return n


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="nextquill-data",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    b = commands.add_parser(
        "build", help="raw review + metadata files -> train/validation/test user rows"
    )
    b.add_argument("--reviews", nargs="+", required=True, type=Path)
    b.add_argument("--meta", nargs="+", required=True, type=Path)
    b.add_argument("--out", required=True, type=Path)
    _add_build_options(b)
    d = commands.add_parser("convert-dpl", help="rows of the DPL release -> user rows")
    d.add_argument("--rows", required=True, type=Path)
    d.add_argument("--meta", required=True, type=Path)
    d.add_argument("--out", required=True, type=Path)
    s = commands.add_parser(
        "synthetic", help="raw Amazon-schema files with planted per-user preferences"
    )
    s.add_argument("--out", required=True, type=Path)
    s.add_argument("--users", type=int, default=200)
    s.add_argument("--reviews-per-user", type=int, default=22)
    s.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        if args.command == "build":
            names = {f.name for f in fields(BuildOptions)}
            options = BuildOptions(
                **{k: v for k, v in vars(args).items() if k in names}, show_progress=not args.quiet
            )
            report = build(args.reviews, args.meta, args.out, options)
            print(
                json.dumps(
                    {k: v for k, v in report.to_json().items() if k != "bad_input"}, indent=2
                )
            )
        elif args.command == "convert-dpl":
            print(f"wrote {convert_dpl(args.rows, args.meta, args.out)} rows to {args.out}")
        else:
            from .synthetic import synthetic_raw_amazon

            reviews, meta = synthetic_raw_amazon(args.users, args.reviews_per_user, seed=args.seed)
            write_jsonl_gz(args.out / "reviews.jsonl.gz", reviews)
            write_jsonl_gz(args.out / "meta.jsonl.gz", meta)
            print(f"wrote {len(reviews)} reviews and {len(meta)} items to {args.out}")
    except (BuildError, FileNotFoundError) as error:
        print(f"nextquill-data: error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main(sys.argv[1:])
