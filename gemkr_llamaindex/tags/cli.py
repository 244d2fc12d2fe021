"""``gemkr tags IMAGE... [--backends classifier,ocr] [--json]``: print the visual tags of images."""

from __future__ import annotations

import argparse
import json
import sys

from gemkr_llamaindex.tags.factory import BACKENDS, DEFAULT_BACKENDS


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``tags`` subcommand to the ``gemkr`` CLI."""
    parser = subparsers.add_parser(
        "tags",
        help="print visual tags (ImageNet labels, OCR text, YOLO classes) of images, offline",
        description="Tag images with offline models; the hint line is what GeMKR, baselines and reader take.",
    )
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    parser.add_argument(
        "--backends",
        default=",".join(DEFAULT_BACKENDS),
        help=f"comma-separated, from {', '.join(BACKENDS)} (default: %(default)s)",
    )
    parser.add_argument(
        "--yolo-weights", default=None, help="local YOLO .pt file (needed by the yolo backend)"
    )
    parser.add_argument(
        "--max-tags", type=int, default=8, help="tags in the hint line (default: %(default)s)"
    )
    parser.add_argument("--no-cache", action="store_true", help="neither read nor write the tag cache")
    parser.add_argument("--json", action="store_true", help="one JSON object per image (tags with scores)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from gemkr_llamaindex.images import ImageLoadError
    from gemkr_llamaindex.tags.base import MissingExtraError
    from gemkr_llamaindex.tags.factory import build_tagger
    from gemkr_llamaindex.tags.format import format_tags

    try:
        tagger = build_tagger(
            args.backends.split(","), yolo_weights=args.yolo_weights, cache=not args.no_cache
        )
    except (ValueError, FileNotFoundError, MissingExtraError) as exc:
        print(f"gemkr tags: {exc}", file=sys.stderr)
        return 2
    status = 0
    for image in args.images:  # one at a time, so a bad file is reported and the rest still get tagged
        try:
            tags = tagger.tag(image)
        except ImageLoadError as exc:
            print(f"gemkr tags: {exc}", file=sys.stderr)
            status = 1
            continue
        hint = format_tags(tags, max_tags=args.max_tags)
        if args.json:
            record = {"image": image, "hint": hint, "tags": [t.to_dict() for t in tags]}
            print(json.dumps(record, ensure_ascii=False))
        else:
            print(f"{image}\t{hint}")
            for tag in tags:
                print(f"  {tag.kind:<6} {tag.score:.3f}  {tag.text}")
    return status
