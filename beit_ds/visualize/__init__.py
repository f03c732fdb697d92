"""Looking inside a model: self-attention maps of reference points (seed §3.4, Fig. 2),
masked-image-modeling predictions (§2.3), and training curves of several runs.

``canvas`` draws (Pillow only), ``inputs`` reads weights and images, ``attention`` and ``mim``
compute what is drawn, ``samples`` writes both to TensorBoard during pre-training, ``curves``
plots ``metrics.jsonl`` files (matplotlib, the ``viz`` extra).
"""
