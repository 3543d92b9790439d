"""Interactive prompt simulation of appendix A ("Training algorithm").

Each mask is segmented in an 11-iteration episode:

1. the first prompt is, with equal probability, one foreground point sampled uniformly
   from the mask or the mask's box with noise on each coordinate (standard deviation 10%
   of the box side, at most 20 px in a 1024-px frame);
2. 8 further points, each sampled uniformly from the error region between the previous
   prediction and the ground truth: a foreground point where the prediction misses the
   mask (false negative), a background point where it overshoots (false positive);
3. 2 iterations that add no point, so the model learns to refine from its own mask: one
   inserted at a random place among the 8, one at the end.

Every iteration after the first also receives the previous low-res logits as the mask
prompt (of the multimask outputs, the one with the highest predicted IoU). A single
prompt (one point or one box) is ambiguous, so it uses the three multimask outputs; once
there are several prompts only the fourth (single-output) token is used.

Frames: points and boxes are in the model's *input* frame (pixels of the ``img_size``
square); ground-truth masks are given in that square too; logits are low-res (256x256).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..masks import batched_mask_to_box
from ..modeling.prompt_encoder import PromptEncoder
from ..modeling.sam import Sam

# Token labels: the official ones (-1 padding, 0 background, 1 foreground) plus the two box
# corners, so a mixed batch of box- and point-started episodes is one tensor.
PAD, BACKGROUND, FOREGROUND, BOX_TOP_LEFT, BOX_BOTTOM_RIGHT = -1, 0, 1, 2, 3


@dataclass(frozen=True)
class PromptConfig:
    """Knobs of the simulation; the defaults are the paper's."""

    num_point_iters: int = 8  # iterations that add an error-region point
    no_point_iters: int = 2  # mask-feedback-only iterations: 2 = the paper's (one random, one last), 1 = last only, 0 = none
    box_prob: float = 0.5  # probability that the first prompt is a box
    box_noise_frac: float = 0.1  # noise std as a fraction of the box side ...
    box_noise_max_px: float = 20.0  # ... capped at this many pixels of a 1024-px frame
    # RITM-style: up to this many corrective clicks (a random number each step) are simulated
    # *without gradients* before the iterations that train, so the model learns to correct
    # masks after several clicks at the cost of cheap forward passes (0 = the paper's episode)
    nograd_clicks: int = 0
    # probability that the trained pass is the first prompt itself (no warm-up clicks); None =
    # every warm-up length 0..nograd_clicks equally likely. The first prompt is where the
    # multimask outputs and the IoU head that ranks them are trained, and where a box or the
    # first click of a user lands; with the uniform draw it gets only 1/(nograd_clicks+1)
    first_prompt_prob: float | None = None
    # also train the single-output token (mask 0) on single prompts, from the same decoder pass:
    # the official predictor returns it for ``multimask_output=False`` (a box, usually), which
    # the paper's recipe only trains once there are several prompts
    single_token_on_first: bool = False


@dataclass
class IterationOutput:
    """What one iteration produced: ``low_res`` MxCx256x256 logits and ``iou_pred`` MxC
    (C = 3 multimask outputs or 1), the prompt tokens used, and whether a point was added."""

    low_res: torch.Tensor
    iou_pred: torch.Tensor
    coords: torch.Tensor
    labels: torch.Tensor
    multimask: bool
    added_point: bool
    trained: bool = True  # False: a no-gradient warm-up iteration (``nograd_clicks``)
    single_low_res: torch.Tensor | None = None  # mask 0 of a single-prompt pass (``single_token_on_first``)
    single_iou_pred: torch.Tensor | None = None


def warmup_clicks(config: PromptConfig, generator: torch.Generator) -> int:
    """How many corrective clicks to simulate without gradients before the trained pass."""
    if not config.nograd_clicks:
        return 0
    if config.first_prompt_prob is None:
        return int(torch.randint(0, config.nograd_clicks + 1, (1,), generator=generator))
    if float(torch.rand((), generator=generator)) < config.first_prompt_prob:
        return 0
    return int(torch.randint(1, config.nograd_clicks + 1, (1,), generator=generator))


def iteration_schedule(num_point_iters: int, generator: torch.Generator, no_point_iters: int = 2) -> list[bool]:
    """For the iterations after the first: True where a new point is added.

    ``num_point_iters`` True entries, one False inserted at a random place among them (it
    may come before any point is added) and one False at the end: ``num_point_iters + 2``
    entries, 10 with the paper's 8, i.e. 11 iterations with the first prompt.
    ``no_point_iters`` 1 keeps only the last False, 0 none (e.g. ``0, 0``: first prompt only,
    a cheap curriculum stage for training from scratch).
    """
    if no_point_iters not in (0, 1, 2):
        raise ValueError(f"no_point_iters must be 0, 1 or 2, got {no_point_iters}")
    schedule = [True] * num_point_iters
    if no_point_iters == 2:
        slot = int(torch.randint(0, num_point_iters + 1, (1,), generator=generator))
        schedule.insert(slot, False)
    return schedule + [False] * min(no_point_iters, 1)


def sample_points(region: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """One point per mask, uniformly among the True pixels of ``region`` (MxHxW bool).

    Returns coordinates Mx2 (x, y) in the region's pixel frame and a bool M vector that is
    False where the region was empty (those points are meaningless). ``generator`` is a CPU
    generator whatever the region's device: one uniform draw per mask picks the pixel by
    inverse CDF on the region's device, so CUDA training needs no host copy of the masks.
    """
    m, h, w = region.shape
    flat = region.reshape(m, -1)
    valid = flat.any(dim=1)
    cum = flat.float().cumsum(dim=1)  # exact: counts stay far below 2**24
    u = torch.rand(m, generator=generator).to(region.device)
    target = (u * cum[:, -1]).unsqueeze(1)
    idx = torch.searchsorted(cum, target, right=True).squeeze(1).clamp(max=h * w - 1)
    xy = torch.stack([idx % w, idx // w], dim=1).float()
    return xy, valid


def mask_boxes(masks: torch.Tensor) -> torch.Tensor:
    """Tight XYXY boxes (inclusive pixel coordinates) of MxHxW non-empty bool masks.

    :func:`segany.masks.batched_mask_to_box` as float32: box prompts are continuous
    coordinates that :func:`noisy_boxes` perturbs (exact, the indices are far below 2**24).
    """
    return batched_mask_to_box(masks).float()


def noisy_boxes(
    masks: torch.Tensor,
    image_sizes: torch.Tensor,
    generator: torch.Generator,
    noise_frac: float = 0.1,
    max_std_px: float = 20.0,
) -> torch.Tensor:
    """Boxes of ``masks`` (MxSxS) with Gaussian noise on each coordinate.

    The std is ``noise_frac`` of the box width (x coordinates) or height (y coordinates),
    at most ``max_std_px`` pixels *of this frame*; the result is clipped to the image
    (``image_sizes`` Mx2, (h, w) inside the square) and kept ordered (x0 <= x1, y0 <= y1).
    """
    box = mask_boxes(masks)
    side_w = (box[:, 2] - box[:, 0] + 1).clamp(min=1)
    side_h = (box[:, 3] - box[:, 1] + 1).clamp(min=1)
    std = torch.stack([side_w, side_h, side_w, side_h], dim=1) * noise_frac
    std = std.clamp(max=max_std_px)
    noise = torch.randn(box.shape, generator=generator).to(box.device) * std
    out = box + noise
    hi = torch.stack([image_sizes[:, 1], image_sizes[:, 0]] * 2, dim=1).to(out) - 1
    out = torch.minimum(out.clamp(min=0), hi)
    x = torch.sort(out[:, 0::2], dim=1).values
    y = torch.sort(out[:, 1::2], dim=1).values
    return torch.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], dim=1)


def first_prompts(
    masks: torch.Tensor,
    image_sizes: torch.Tensor,
    config: PromptConfig,
    generator: torch.Generator,
    frame_side: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mx2x2 coordinates and Mx2 labels of the first prompt: a box (two corner tokens) or a
    foreground point followed by a padding token (as the official encoder pads points).

    ``frame_side`` is the model's input side (the box-noise cap is given for a 1024 px frame);
    it defaults to the masks' side, which differs only for training crops."""
    m, side, _ = masks.shape
    side = frame_side or side
    device = masks.device
    use_box = (torch.rand(m, generator=generator) < config.box_prob).to(device)
    points, _ = sample_points(masks, generator)
    boxes = noisy_boxes(masks, image_sizes, generator, config.box_noise_frac, config.box_noise_max_px * side / 1024.0)
    coords = torch.zeros(m, 2, 2, device=device)
    labels = torch.full((m, 2), PAD, dtype=torch.long, device=device)
    coords[:, 0] = torch.where(use_box[:, None], boxes[:, :2], points)
    coords[:, 1] = torch.where(use_box[:, None], boxes[:, 2:], torch.zeros_like(points))
    labels[:, 0] = torch.where(use_box, BOX_TOP_LEFT, FOREGROUND)
    labels[:, 1] = torch.where(use_box, BOX_BOTTOM_RIGHT, PAD)
    return coords, labels


def error_points(pred: torch.Tensor, gt: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """One corrective point per mask from the error region of ``pred`` vs ``gt`` (MxHxW bool).

    The point is uniform over false negatives and false positives together; its label is
    foreground on a false negative, background on a false positive, padding when the
    prediction is already exact. Returns Mx1x2 coordinates and Mx1 labels.
    """
    fn = gt & ~pred
    fp = pred & ~gt
    xy, valid = sample_points(fn | fp, generator)
    x, y = xy[:, 0].long(), xy[:, 1].long()
    on_fn = fn[torch.arange(len(fn)), y, x]
    labels = torch.where(on_fn, FOREGROUND, BACKGROUND)
    labels = torch.where(valid, labels, PAD)
    return xy[:, None, :], labels[:, None]


def embed_prompt_tokens(prompt_encoder: PromptEncoder, coords: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sparse embeddings of MxKx2 input-frame coordinates with labels in {-1, 0, 1, 2, 3}.

    Same tokens as :class:`PromptEncoder` gives for points (labels -1/0/1) and box corners
    (2/3), from its one token embedder (:meth:`PromptEncoder.embed_point_tokens`); the
    transformer does not depend on token order, so one tensor can hold any mix of
    box- and point-started episodes.
    """
    return prompt_encoder.embed_point_tokens(coords, labels)


def select_feedback(low_res: torch.Tensor, iou_pred: torch.Tensor) -> torch.Tensor:
    """Mx1x256x256 logits to feed back: the output with the highest predicted IoU."""
    best = iou_pred.argmax(dim=1)
    return low_res[torch.arange(len(low_res)), best][:, None]


def upscale_to_input(low_res: torch.Tensor, side: int) -> torch.Tensor:
    """Mx1xhxw low-res logits -> MxSxS logits in the padded input square."""
    return F.interpolate(low_res.float(), (side, side), mode="bilinear", align_corners=False)[:, 0]


def window_pe(dense_pe: torch.Tensor, offsets: torch.Tensor, grid: int) -> torch.Tensor:
    """MxCxgxg windows of the 1xCxGxG grid encoding at ``offsets`` (Mx2 (x, y) grid cells).

    A training crop is a window of the model's input square: its embedding cells get the
    positional encoding of the cells they would occupy there, so the decoder sees the
    encodings it sees at inference."""
    rows = offsets[:, 1, None] + torch.arange(grid, device=offsets.device)[None]
    cols = offsets[:, 0, None] + torch.arange(grid, device=offsets.device)[None]
    pe = dense_pe[0][:, rows]  # C x M x g x G
    pe = pe.permute(1, 0, 2, 3)  # M x C x g x G
    return torch.gather(pe, 3, cols[:, None, None, :].expand(-1, pe.shape[1], grid, -1))


def simulate_episode(
    sam: Sam,
    image_embeddings: torch.Tensor,
    embedding_index: torch.Tensor,
    gt_masks: torch.Tensor,
    image_sizes: torch.Tensor,
    generator: torch.Generator,
    config: PromptConfig = PromptConfig(),
    valid: torch.Tensor | None = None,
    pe_offsets: torch.Tensor | None = None,
) -> list[IterationOutput]:
    """Run the episode (11 iterations with the paper's settings) for M masks and return every
    iteration's outputs.

    Args:
        image_embeddings: BxCxgxg (gradients flow into them from every trained iteration).
        embedding_index: M ints, the image of each mask.
        gt_masks: MxSxS bool masks in the padded input square (S = ``sam.img_size``) or, for
            training crops, in the crop (S = the crop side).
        image_sizes: Mx2 (h, w) of each mask's image inside the square.
        generator: the only source of randomness (CPU generator).
        valid: MxSxS bool, the pixels that show the image (default: from ``image_sizes``).
        pe_offsets: Mx2 grid-cell offsets of each crop in the input square (crops only).
    """
    side = gt_masks.shape[-1]
    pe_layer = sam.prompt_encoder
    dense_pe = pe_layer.get_dense_pe()
    grid = image_embeddings.shape[-1]
    stride = sam.img_size // dense_pe.shape[-1]
    if pe_offsets is not None:
        dense_pe = window_pe(dense_pe, pe_offsets.to(dense_pe.device), grid)
        shift = (pe_offsets.to(gt_masks.device).float() * stride)[:, None, :]
    else:
        shift = None
    emb = image_embeddings[embedding_index]
    coords, labels = first_prompts(gt_masks, image_sizes, config, generator, sam.img_size)
    warmup = warmup_clicks(config, generator)
    schedule = [True, *iteration_schedule(config.num_point_iters + warmup, generator, config.no_point_iters)]
    outputs: list[IterationOutput] = []
    feedback: torch.Tensor | None = None
    single_prompt = True
    # predictions over the padding are not errors the user could click on
    if valid is None:
        ys = torch.arange(side, device=gt_masks.device)
        inside = (ys[None, :, None] < image_sizes[:, 0, None, None].to(ys)) & (
            ys[None, None, :] < image_sizes[:, 1, None, None].to(ys)
        )
    else:
        inside = valid.to(gt_masks.device)
    for step, adds in enumerate(schedule):
        if step > 0 and adds:
            assert feedback is not None
            pred = (upscale_to_input(feedback, side) > sam.mask_threshold) & inside
            new_xy, new_lab = error_points(pred, gt_masks, generator)
            coords = torch.cat([coords, new_xy.to(coords)], dim=1)
            labels = torch.cat([labels, new_lab.to(labels)], dim=1)
            single_prompt = False
        trained = step >= warmup
        with torch.set_grad_enabled(trained and torch.is_grad_enabled()):
            sparse = embed_prompt_tokens(pe_layer, coords if shift is None else coords + shift, labels)
            if feedback is None:
                dense = pe_layer.no_mask_dense(len(emb), (grid, grid))
            else:
                dense = pe_layer.mask_downscaling(feedback.detach().to(emb.dtype))
            single = None
            if single_prompt and trained and config.single_token_on_first:
                every, every_iou = sam.mask_decoder.predict_masks(emb, dense_pe, sparse, dense)
                low_res, iou_pred, single = every[:, 1:], every_iou[:, 1:], (every[:, :1], every_iou[:, :1])
            else:
                low_res, iou_pred = sam.mask_decoder(
                    image_embeddings=emb if trained else emb.detach(),
                    image_pe=dense_pe,
                    sparse_prompt_embeddings=sparse,
                    dense_prompt_embeddings=dense,
                    multimask_output=single_prompt,
                )
        out = IterationOutput(low_res, iou_pred, coords, labels, single_prompt, step > 0 and adds, trained)
        if single is not None:
            out.single_low_res, out.single_iou_pred = single
        outputs.append(out)
        feedback = select_feedback(low_res.detach().float(), iou_pred.detach().float())
    return outputs
