"""Semantic segmentation with GeNAS backbones: MMSegmentation's DeepLabv3 with only the backbone replaced.

``segmentation.backbone`` registers ``GeNASBackbone`` with MMSeg (configs load it through ``custom_imports``);
``segmentation/train.py`` and ``segmentation/test.py`` run MMEngine's Runner and write
``results_segmentation.json``; the recipes are ``configs/segmentation/deeplabv3_*_512x1024_80k_cityscapes.py``.
Importing this package imports nothing else (MMSeg loads only with its submodules).
"""
