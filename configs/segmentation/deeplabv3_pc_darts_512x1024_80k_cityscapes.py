# DeepLabv3 with the PC-DARTS (the published CIFAR-10 cell, 5.3M / 0.59G as Table 4's row; paper: 70.68 mIoU) backbone
# on Cityscapes, as deeplabv3_genas_c100 (512x1024 crops, 80k iterations).
# Heads' in_channels: timm.create_model('pc_darts', features_only=True).feature_info.channels()[3], [2]
_base_ = './deeplabv3_genas_c100_512x1024_80k_cityscapes.py'
model = dict(
    backbone=dict(model_name='pc_darts'),
    decode_head=dict(in_channels=768),
    auxiliary_head=dict(in_channels=384))
