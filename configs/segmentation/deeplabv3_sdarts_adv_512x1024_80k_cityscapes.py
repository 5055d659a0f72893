# DeepLabv3 with the SDARTS-ADV (paper Table 4: 71.77 mIoU) backbone
# on Cityscapes, as deeplabv3_genas_c100 (512x1024 crops, 80k iterations).
# Heads' in_channels: timm.create_model('sdarts_adv', features_only=True).feature_info.channels()[3], [2]
_base_ = './deeplabv3_genas_c100_512x1024_80k_cityscapes.py'
model = dict(
    backbone=dict(model_name='sdarts_adv'),
    decode_head=dict(in_channels=832),
    auxiliary_head=dict(in_channels=416))
