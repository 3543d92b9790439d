"""Latent space probing (paper appendix D.6, figure 17): what do SAM's embeddings know?

- :mod:`~segany.probe.tokens`: the mask decoder's output token of a decoded mask;
- :mod:`~segany.probe.features`: the image embedding pooled inside a mask, the prompt's
  centre point, the colour-histogram baseline;
- :mod:`~segany.probe.sources`: masks from an SA-1B folder or a COCO file, matched to images;
- :mod:`~segany.probe.embed`: one embedding per mask (``segany probe embed``);
- :mod:`~segany.probe.store`: the ``embeddings.npz`` file;
- :mod:`~segany.probe.similar`: nearest masks by cosine similarity, as a grid of crops;
- :mod:`~segany.probe.map`: a 2-D PCA / t-SNE map of all masks;
- :mod:`~segany.probe.linear`: a linear probe against colour and majority baselines.
"""
