# The output-stride-16 switch of deeplabv3_genas_c100: ASPP on level 2 (stride 16) with DeepLabv3's stride-16
# rates (6, 12, 18), the auxiliary head on level 1. out_indices stops at level 2, so timm prunes the cells after
# the second reduction: a shorter network than the ImageNet one (the default stride-32 config keeps all cells).
_base_ = './deeplabv3_genas_c100_512x1024_80k_cityscapes.py'
model = dict(
    backbone=dict(out_indices=(0, 1, 2)),
    decode_head=dict(in_index=2, in_channels=368, dilations=(1, 6, 12, 18)),
    auxiliary_head=dict(in_index=1, in_channels=184))
