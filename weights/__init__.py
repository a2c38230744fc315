"""Pretrained weights: torchvision enums, our and foreign checkpoints, key mapping, 2D->3D inflation."""
