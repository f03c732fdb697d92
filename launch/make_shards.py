"""Pack a folder tree or a ``path[,label]`` file list into WebDataset tar shards with an index.

    python launch/make_shards.py /data/imagenet22k/train /data/in22k-shards --max-shard-mb 1024
    python launch/make_shards.py /data/in22k/files.txt /data/in22k-shards
    python launch/make_shards.py --index-only /data/existing-shards   # index shards made elsewhere

Image bytes are copied untouched (``<key>.<ext>`` + ``<key>.cls`` when labelled); ``index.npz``
lets the loader start without scanning. Read the result with ``data.source=shards data.path=OUT``.
"""

import argparse
from pathlib import Path

from tqdm import tqdm

from beit_ds.data.shards import scan_shards, write_index, write_shards
from beit_ds.data.skips import DataError
from beit_ds.data.sources import tree_or_list_records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "src", type=Path, help="folder tree, file list, or (with --index-only) a shard folder"
    )
    parser.add_argument("out", type=Path, nargs="?", help="empty output folder for the shards")
    parser.add_argument("--max-shard-mb", type=float, default=1024.0, help="shard size bound (MiB)")
    parser.add_argument("--max-shard-samples", type=int, default=1_000_000, help="images per shard bound")
    parser.add_argument("--index-only", action="store_true", help="only (re)write index.npz of src's shards")
    args = parser.parse_args()
    try:
        if args.index_only:
            records = scan_shards(args.src)
            print(
                f"indexed {len(records)} images in {len(records.containers)} shards: {write_index(records, args.src)}"
            )
            return
        if args.out is None:
            parser.error("out is required unless --index-only")
        records = tree_or_list_records(args.src)
        with tqdm(total=len(records), unit="img", desc="sharding") as bar:
            report = write_shards(
                records, args.out, int(args.max_shard_mb * 2**20), args.max_shard_samples, bar.update
            )
    except DataError as err:
        parser.exit(2, f"error: {err}\n")
    classes = f", {len(records.classes)} classes" if records.classes else ", unlabelled"
    print(f"{args.out}: {report.summary()}{classes}")


if __name__ == "__main__":
    main()
