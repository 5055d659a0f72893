# DeepLabv3 with the DropNAS (CIFAR-100 cell, no SE; paper Table 4: 71.16 mIoU) backbone
# on Cityscapes, as deeplabv3_genas_c100 (512x1024 crops, 80k iterations).
# Heads' in_channels: timm.create_model('dropnas', features_only=True).feature_info.channels()[3], [2]
_base_ = './deeplabv3_genas_c100_512x1024_80k_cityscapes.py'
model = dict(
    backbone=dict(model_name='dropnas'),
    decode_head=dict(in_channels=736),
    auxiliary_head=dict(in_channels=368))
