"""modeling/fingerprint.py: the three model fingerprints keep their values (they are resume keys).

The golden values below were computed with the implementations these replaced
(``automatic.folder.model_fingerprint``, ``eval.resume.model_fingerprint``,
``embeddings.encoder_fingerprint``); a change here would make every stored ``segany auto``
output, resume folder and embedding file stop matching its model.
"""

from __future__ import annotations

import torch

from segany.modeling.fingerprint import image_encoder_digest, sampled_weights_digest, weights_sha256


class _PE(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        matrix = torch.arange(2 * 128, dtype=torch.float32).reshape(2, 128) / 64 - 2
        self.register_buffer("positional_encoding_gaussian_matrix", matrix)


class _PromptEncoder(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.pe_layer = _PE()


class _Tiny(torch.nn.Module):
    """A model shaped like Sam where the fingerprints look, with exactly representable weights
    (so the golden values do not depend on a random generator or a platform)."""

    mask_threshold = 0.0

    def __init__(self) -> None:
        super().__init__()
        # 20,000 weights in the last layer: more than the 4096 samples of the sampled digest
        self.image_encoder = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 5000))
        self.prompt_encoder = _PromptEncoder()
        self.head = torch.nn.Linear(2, 1)
        with torch.no_grad():
            for i, p in enumerate(self.parameters()):
                p.copy_(torch.arange(p.numel(), dtype=torch.float32).reshape(p.shape) / 1024 - (i + 1))


def test_values_are_the_stored_ones():
    m = _Tiny()
    assert weights_sha256(m) == "148a857fbc231dfc49c68760301676322bb978af8dad925c14f970cdf291c744"
    assert sampled_weights_digest(m) == "f0c6c99f028dba60"
    assert image_encoder_digest(m) == "cc829162c3de551c"
    h = _Tiny().half()
    assert weights_sha256(h) == "61ae98e4c9dc7723fb3c755130b50b9f295ab4e765f8270216c2d69ab90bc76b"
    assert sampled_weights_digest(h) == "e314210f8e769caf"
    assert image_encoder_digest(h) == "f1c0ae674c1ef1e7"
    assert sampled_weights_digest(None) == "none"


def test_what_each_fingerprint_sees():
    base = _Tiny()
    full, sampled, encoder = weights_sha256(base), sampled_weights_digest(base), image_encoder_digest(base)

    decoder_changed = _Tiny()
    with torch.no_grad():
        decoder_changed.head.bias += 1.0
    # an embedding does not depend on the decoder: the encoder digest stays, the others move
    assert image_encoder_digest(decoder_changed) == encoder
    assert weights_sha256(decoder_changed) != full
    assert sampled_weights_digest(decoder_changed) != sampled

    threshold_changed = _Tiny()
    threshold_changed.mask_threshold = 0.5
    # only the provenance of automatic outputs counts the mask threshold
    assert weights_sha256(threshold_changed) != full
    assert sampled_weights_digest(threshold_changed) == sampled

    cast = _Tiny().double()  # the same values in another dtype
    assert weights_sha256(cast) != full  # a --dtype run is another model for `segany auto`
    assert sampled_weights_digest(cast) == sampled  # sampled values are compared as float32
    assert image_encoder_digest(cast) == encoder
