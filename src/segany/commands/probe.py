"""``segany probe embed|similar|map|linear``: probe the latent space of a model (paper D.6).

``embed`` writes ``DIR/embeddings.npz`` (:mod:`segany.probe.store`); the other actions read
one or more such folders. See docs/evaluation.md, "Latent space probing".
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from .common import add_model_args


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("probe", help="embed masks, find similar ones, map them, linear-probe them (paper D.6)")
    sub = p.add_subparsers(dest="probe_command", metavar="ACTION")

    e = sub.add_parser("embed", help="one decoder-token and one pooled embedding per mask -> DIR/embeddings.npz")
    e.add_argument("images", nargs="+", metavar="IMAGES", help="image files, folders (recursive) or globs")
    e.add_argument(
        "--masks",
        required=True,
        metavar="SOURCE",
        help="SA-1B folder (or one SA-1B JSON), or a COCO instances JSON (its supercategories become labels)",
    )
    e.add_argument("--out", required=True, metavar="DIR", help="output folder (embeddings.npz is written there)")
    e.add_argument(
        "--dataset",
        help="data set name stored with every mask (default: the mask folder's name, "
        "or for COCO annotations/instances_*.json the folder above annotations/)",
    )
    e.add_argument(
        "--prompt",
        choices=["box+point", "box"],
        default="box+point",
        help="prompt that yields the decoder token: the mask's box and a click at its centre (default), "
        "or the box alone",
    )
    e.add_argument("--limit", type=int, help="embed the masks of the first N images only (in mask-file order)")
    add_model_args(e)
    e.set_defaults(func=run_embed)

    s = sub.add_parser("similar", help="grid of the masks most similar to a query mask (paper fig. 17)")
    s.add_argument("dirs", nargs="+", metavar="DIR", help="folders written by `probe embed` (searched together)")
    s.add_argument(
        "--query",
        required=True,
        metavar="IMAGE:MASK_ID",
        help="the query mask: image file name (or stem) and annotation id; DATASET/IMAGE:ID if ambiguous",
    )
    s.add_argument("--k", type=int, default=16, help="number of neighbours (default 16)")
    s.add_argument(
        "--feature", choices=["token", "pooled", "colour"], default="token", help="embedding compared (default token)"
    )
    s.add_argument("--other-images", action="store_true", help="only masks of other images than the query's")
    s.add_argument("--out", required=True, metavar="PNG", help="output PNG")
    s.set_defaults(func=run_similar)

    m = sub.add_parser("map", help="2-D map (PCA or t-SNE) of all mask embeddings, coloured by data set")
    m.add_argument("dirs", nargs="+", metavar="DIR", help="folders written by `probe embed`")
    m.add_argument("--out", required=True, metavar="PNG", help="output PNG")
    m.add_argument("--method", choices=["pca", "tsne"], default="pca", help="projection (default pca)")
    m.add_argument(
        "--feature", default="token,pooled", help="comma-separated features, one panel each (default token,pooled)"
    )
    m.add_argument(
        "--color-by", choices=["dataset", "label"], default="dataset", help="colour groups (default dataset)"
    )
    m.set_defaults(func=run_map)

    li = sub.add_parser("linear", help="logistic-regression probe of the masks' labels, with colour/majority baselines")
    li.add_argument("--train", required=True, nargs="+", metavar="DIR", help="embedding folders to fit on")
    li.add_argument(
        "--val", required=True, nargs="+", metavar="DIR", help="embedding folders to score on (never fitted)"
    )
    li.add_argument("--feature", default="token,pooled,colour", help="comma-separated features (default all three)")
    li.add_argument("--out", metavar="DIR", help="also write linear.json and linear.png there")
    li.set_defaults(func=run_linear)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def _features(text: str) -> tuple[str, ...]:
    from ..probe.store import FEATURES

    names = tuple(f.strip() for f in text.split(",") if f.strip())
    bad = [f for f in names if f not in FEATURES]
    if not names or bad:
        raise ValueError(f"--feature {text!r}: choose from {', '.join(FEATURES)}")
    return names


def run_embed(args: argparse.Namespace) -> int:
    from ..probe import store
    from ..probe.embed import embed_masks
    from ..probe.sources import default_dataset_name, list_image_files, read_masks
    from .common import load_model_from_args

    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be at least 1, got {args.limit}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a folder")
    images = list_image_files(args.images)
    items = read_masks(args.masks, images, args.limit)  # every input is checked before the model loads
    model = load_model_from_args(args)
    dataset = args.dataset or default_dataset_name(args.masks)
    meta = {
        "command": shlex.join(["segany", "probe", *sys.argv[2:]]) if sys.argv[1:2] == ["probe"] else "",
        "mask_source": str(Path(args.masks).resolve()),
        "checkpoint": args.checkpoint or "default",
        "model_type": args.model_type or ("default" if args.checkpoint is None else "auto"),
        "trained": bool(getattr(model, "is_trained", True)),
    }
    emb = embed_masks(model, items, dataset, prompt=args.prompt, meta=meta)
    path = store.save(out, emb)
    print(
        f"{len(emb)} masks of {len(items)} images embedded ({dataset}); mean IoU of the decoded mask with the "
        f"annotation {float(emb.decoded_iou.mean()):.3f}; written to {path}"
    )
    return 0


def run_similar(args: argparse.Namespace) -> int:
    from ..probe import store
    from ..probe.similar import nearest, render_similar

    emb = store.load_many(args.dirs)
    query = store.find_mask(emb, args.query)
    idx, sims = nearest(emb, query, args.feature, args.k, other_images=args.other_images)
    path = render_similar(emb, query, idx, sims, args.feature, args.out)
    for i, s in zip(idx, sims):
        print(f"{s:.4f}  {emb.dataset[i]}/{emb.mask_id[i]}  {emb.category[i] or emb.label[i]}")
    print(f"grid written to {path}")
    return 0


def run_map(args: argparse.Namespace) -> int:
    from ..probe import store
    from ..probe.map import render_map

    emb = store.load_many(args.dirs)
    path = render_map(emb, args.out, _features(args.feature), args.method, args.color_by)
    print(f"map of {len(emb)} masks written to {path}")
    return 0


def run_linear(args: argparse.Namespace) -> int:
    from ..eval.report import write_json
    from ..probe import store
    from ..probe.linear import render_scores, run_linear_probe, summary_lines

    features = _features(args.feature)
    train, val = store.load_many(args.train), store.load_many(args.val)
    store.concatenate([train, val], ["--train", "--val"])  # same model and prompt, or refuse
    result = run_linear_probe(train, val, features)
    for line in summary_lines(result):
        print(line)
    if args.out:
        out = Path(args.out)
        result["train"], result["val"] = [str(d) for d in args.train], [str(d) for d in args.val]
        write_json(out / "linear.json", result)
        render_scores(result, out / "linear.png")
        print(f"report written to {out / 'linear.json'} and {out / 'linear.png'}")
    return 0
