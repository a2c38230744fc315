"""Video data: decoding (PyAV), clip sampling, split lists, the clip dataset, the synthetic generator.

Flow for one sample: ``VideoClipDataset[i]`` -> open the file (``decode.VideoReader``) -> frame indices of
the clip from the file's frame count and fps (``sampling.ClipSampler``) -> seek near the first index and
decode up to the last, resized on the fly to the short side -> crop to ``crop_size`` -> transform
``(T, H, W, C) uint8 -> (C, T, H, W) float``.
"""
