"""``segany export onnx|safetensors``: the decoder (official ONNX signature) and/or image
encoder as ONNX, or any checkpoint as a segany safetensors file (optionally float16)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .common import add_model_args, load_model_from_args


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("export", help="export the model (ONNX)")
    kinds = parser.add_subparsers(dest="export_kind", metavar="FORMAT", required=True)
    onnx = kinds.add_parser(
        "onnx",
        help="prompt encoder + mask decoder with the official ONNX signature, optionally the image encoder",
        description="Writes OUT (the decoder, inputs image_embeddings/point_coords/point_labels/mask_input/"
        "has_mask_input/orig_im_size -> masks/iou_predictions/low_res_masks), the format CVAT, Label Studio, "
        "X-AnyLabeling and segany's annotation page consume.",
    )
    add_model_args(onnx, with_compile=False)
    onnx.add_argument("--out", required=True, help="decoder .onnx path")
    onnx.add_argument("--return-single-mask", action="store_true", help="output only the best mask")
    onnx.add_argument("--quantize", action="store_true",
                      help="uint8 dynamic quantisation of the MatMul/Gemm weights (the default decoder file goes "
                      "from 20.6 to 8.9 MB, 2.3x smaller; slightly less exact)")
    onnx.add_argument("--use-stability-score", action="store_true", help="stability score in place of predicted IoU")
    onnx.add_argument("--return-extra-metrics", action="store_true", help="also output stability_scores and areas")
    onnx.add_argument("--encoder-out", default=None, help="also export the image encoder to this path")
    onnx.add_argument(
        "--encoder-preprocess",
        action="store_true",
        help="encoder takes a uint8 HxWx3 RGB image of any size (resize, normalise and pad in the graph)",
    )
    onnx.add_argument("--click-out", default=None,
                      help="also export the per-click decoder (the per-image cache as inputs, no mask prompt; "
                      "segany.export.onnx_click) to this path; needs --cache-out")
    onnx.add_argument("--cache-out", default=None,
                      help="the per-click decoder's cache graph (image_embeddings -> cache tensors, once per image)")
    onnx.add_argument("--opset", type=int, default=17)
    onnx.add_argument("--check", action="store_true", help="run the decoder once in onnxruntime and print its latency")
    onnx.set_defaults(func=run_onnx)

    st = kinds.add_parser(
        "safetensors",
        help="any checkpoint (official .pth, HF, segany) -> segany .safetensors with its config embedded",
        description="Writes a file `--checkpoint` and `--model-type auto` read without further options. "
        "--dtype float16 halves the size (how segany ships its default model); loading casts back to float32.",
    )
    add_model_args(st, with_dtype=False, with_compile=False)
    st.add_argument("--out", required=True, help="output .safetensors path (written atomically)")
    st.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32",
                    help="type the floating-point tensors are stored in (default float32)")
    st.add_argument("--note", default=None, help="free text stored in the file's metadata (e.g. provenance)")
    st.set_defaults(func=run_safetensors)


def run_onnx(args: argparse.Namespace) -> int:
    from ..automatic.outputs import check_outputs
    from ..export.onnx import export_decoder, export_encoder

    _onnx_device_and_dtype(args)
    if (args.click_out is None) != (args.cache_out is None):
        raise ValueError("--click-out and --cache-out go together (the click graph reads the cache graph's outputs)")
    outputs = [("--out", Path(args.out))] + ([("--encoder-out", Path(args.encoder_out))] if args.encoder_out else [])
    if args.click_out:
        outputs += [("--click-out", Path(args.click_out)), ("--cache-out", Path(args.cache_out))]
    check_outputs(outputs, inputs=[Path(args.checkpoint)] if args.checkpoint else [])
    model = load_model_from_args(args)
    # the output options apply alike to the official-contract and the per-click decoder
    options = dict(
        return_single_mask=args.return_single_mask,
        use_stability_score=args.use_stability_score,
        return_extra_metrics=args.return_extra_metrics,
        quantize=args.quantize,
        opset=args.opset,
    )
    t0 = time.perf_counter()
    out = export_decoder(model, args.out, **options)
    print(f"decoder: {out} ({out.stat().st_size / 1e6:.1f} MB, {time.perf_counter() - t0:.1f} s)")
    if args.encoder_out:
        t0 = time.perf_counter()
        enc = export_encoder(
            model, args.encoder_out, with_preprocess=args.encoder_preprocess, quantize=args.quantize, opset=args.opset
        )
        print(f"encoder: {enc} ({enc.stat().st_size / 1e6:.1f} MB, {time.perf_counter() - t0:.1f} s)")
    if args.click_out:
        from ..export.onnx_click import export_click_decoder, export_decoder_cache

        t0 = time.perf_counter()
        click = export_click_decoder(model, args.click_out, **options)
        cache = export_decoder_cache(model, args.cache_out, quantize=args.quantize, opset=args.opset)
        print(f"per-click decoder: {click} + cache graph {cache} "
              f"({(click.stat().st_size + cache.stat().st_size) / 1e6:.1f} MB, {time.perf_counter() - t0:.1f} s)")
    if args.check:
        print(f"onnxruntime decoder latency: {_check_latency(Path(out)):.1f} ms (median of 20, 1 thread)")
    return 0


def _onnx_device_and_dtype(args: argparse.Namespace) -> None:
    """ONNX export traces the model on the CPU in float32, and says so instead of quietly
    ignoring ``--device``/``--dtype``.

    Why: the exported graph is device-independent (the runtime picks its own device), so
    tracing on a GPU gives the same file; a half-precision graph, on the other hand, would
    be a different file that the official signature (float32 inputs) and the browser page
    cannot feed, so ``--dtype`` other than float32 is refused rather than dropped.
    """
    from .common import parse_device

    if args.dtype != "float32":
        raise ValueError(
            f"--dtype {args.dtype}: ONNX export writes a float32 graph (the official decoder signature); "
            "use --quantize for a smaller file"
        )
    device = parse_device(str(args.device))  # a typo is still an error
    if device.type != "cpu":
        print(f"note: ONNX export traces the model on the CPU (the file is the same on any device); "
              f"--device {args.device} is not used", file=sys.stderr)
    args.device = "cpu"


def run_safetensors(args: argparse.Namespace) -> int:
    import torch

    from ..automatic.outputs import check_outputs
    from ..modeling.registry import save_checkpoint
    from .common import parse_device

    # The model is only read and written back: it is loaded on the CPU (where the file is
    # written from), in the storage --dtype; a --device other than cpu is checked and noted.
    device = parse_device(str(args.device))
    if device.type != "cpu":
        print(f"note: export safetensors works on the CPU (the file is the same); --device {args.device} is not used",
              file=sys.stderr)
    args.device = "cpu"
    out = Path(args.out)
    check_outputs([("--out", out)], inputs=[Path(args.checkpoint)] if args.checkpoint else [])
    model = load_model_from_args(args)
    dtype = getattr(torch, args.dtype)
    meta = {"note": args.note} if args.note else None
    out.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(model, out, extra_meta=meta, dtype=None if dtype == torch.float32 else dtype)
    print(f"{out} ({out.stat().st_size / 1e6:.1f} MB, {args.dtype})")
    return 0


def _check_latency(path: Path) -> float:
    import numpy as np
    import onnxruntime as ort

    from ..export.onnx import decoder_example_inputs

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    feeds = {k: v.numpy() for k, v in decoder_example_inputs(n_points=2).items()}
    sess.run(None, feeds)
    times = []
    for _ in range(20):
        t0 = time.perf_counter()
        sess.run(None, feeds)
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1000)
